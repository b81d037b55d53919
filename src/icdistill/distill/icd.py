"""The ICD module: instance encoder, decoder, auxiliary predictor and distillation adapter.

ICD_SPEC §4–§6. It takes feature maps, targets and image sizes -- never a detector -- so any
detector whose distilled levels align between teacher and student can use it.

Shapes: B images, K instance slots, S tokens (all levels flattened row-major and concatenated,
finest level first), d hidden width, H heads, d_h = d / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.distill.losses import (
    NUM_SCALE_BINS,
    attention_weighted_distill_loss,
    identification_loss,
    instance_descriptor,
    level_position_encoding,
    regression_loss,
    split_heads,
)
from icdistill.distill.sampling import Instances, PriorTensors, build_instances

# Queries processed at once when the real instances' attention is summed (§6 "Cost"):
# memory is O(B·H·chunk·S) instead of O(B·H·K·S).
ATTENTION_CHUNK = 16


@dataclass
class TeacherTokens:
    """Teacher features flattened for the decoder.

    Attributes:
        tokens: float Tensor[B, S, d] (after the input projection when C_t ≠ d).
        pos: float Tensor[B, S, d] sine position encoding (zeros on padding).
        valid: bool Tensor[B, S], False on padded tokens.
        level_shapes: (H_l, W_l) of each level, in token order.
    """

    tokens: Tensor
    pos: Tensor
    valid: Tensor
    level_shapes: list[tuple[int, int]]


def flatten_levels(features: Sequence[Tensor]) -> Tensor:
    """[B, C, H_l, W_l] per level -> float Tensor[B, S, C], row-major per level, levels concatenated."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)


def valid_token_mask(
    level_shapes: Sequence[tuple[int, int]], strides: Sequence[int], image_sizes: Sequence[tuple[int, int]], device
) -> list[Tensor]:
    """Per level a bool Tensor[B, H_l, W_l]: token (y, x) is valid iff y < ceil(h_b/stride) and
    x < ceil(w_b/stride) (§4.2)."""
    masks = []
    for (height, width), stride in zip(level_shapes, strides):
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        per_image = [
            (rows[:, None] < math.ceil(h / stride)) & (cols[None, :] < math.ceil(w / stride))
            for h, w in image_sizes
        ]
        masks.append(torch.stack(per_image))
    return masks


class DecoderLayer(nn.Module):
    """Cross-attention from instance queries to teacher tokens, then FFN; post-norm, no dropout,
    no self-attention between queries (§4.3)."""

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def keys(self, key_in: Tensor) -> Tensor:
        """W_K·key_in split into heads: [B, S, d] -> [B, H, S, d_h]."""
        return split_heads(self.k_proj(key_in), self.num_heads)

    def forward(
        self, query: Tensor, key_in: Tensor, value_in: Tensor, valid: Tensor, *, return_kv: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """query: [B, K, d]; key_in, value_in: [B, S, d]; valid: bool [B, S] -> g: [B, K, d].

        With ``return_kv`` also the keys [B, H, S, d_h] and values W_V·value_in [B, S, d], so the
        distillation weights and loss reuse them instead of projecting the tokens again.
        """
        q = split_heads(self.q_proj(query), self.num_heads)
        k = self.keys(key_in)
        values = self.v_proj(value_in)
        # A fused kernel: the decoder output never needs the attention matrix itself.
        attended = F.scaled_dot_product_attention(
            q, k, split_heads(values, self.num_heads), attn_mask=valid[:, None, None, :]
        )
        attended = attended.transpose(1, 2).flatten(2)
        u = self.norm1(query + self.out_proj(attended))
        g = self.norm2(u + self.ffn(u))
        return (g, k, values) if return_kv else g

    def attention_probs(self, query: Tensor, key_in: Tensor, valid: Tensor) -> Tensor:
        """Softmax attention over all tokens: float Tensor[B, H, K, S] (for small K only)."""
        q = split_heads(self.q_proj(query), self.num_heads)
        k = self.keys(key_in)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return logits.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(dim=-1)

    @torch.no_grad()
    def real_instance_weights(
        self, query: Tensor, keys: Tensor, valid: Tensor, is_real: Tensor, chunk: int = ATTENTION_CHUNK
    ) -> Tensor:
        """w[b,h,s] = Σ_{i real in b} softmax_s(a[b,h,i,s]), detached (§6).

        Args:
            query: [B, K, d], the layer's input queries; keys: [B, H, S, d_h] from :meth:`keys`.
        Real slots are [0, n_b), so only the first max_b n_b queries are visited, ``chunk`` at a
        time. Returns float Tensor[B, H, S] with Σ_s w[b,h,s] = n_b.
        """
        batch = query.shape[0]
        num_tokens = keys.shape[2]
        weights = query.new_zeros(batch, self.num_heads, num_tokens)
        max_real = int(is_real.sum(dim=1).max()) if is_real.numel() else 0
        if max_real == 0:
            return weights
        k = keys.detach()
        scale = 1.0 / math.sqrt(k.shape[-1])
        invalid = ~valid[:, None, None, :]
        for start in range(0, max_real, chunk):
            stop = min(start + chunk, max_real)
            q = split_heads(self.q_proj(query[:, start:stop]), self.num_heads)
            probs = (q @ k.transpose(-1, -2) * scale).masked_fill(invalid, float("-inf")).softmax(dim=-1)
            real = is_real[:, start:stop].to(probs.dtype)[:, None, :, None]
            weights += (probs * real).sum(dim=2)
        return weights


class ICDModule(nn.Module):
    """Everything ICD trains besides the student: query MLP, decoder, predictor, adapter.

    Args:
        num_classes: C, contiguous class ids 0..C-1.
        teacher_channels: C_t of the teacher's distilled levels.
        student_channels: C_s of the student's distilled levels.
        prior: the training set's prior (freq, w/h mean and std per class, each [C]).
        hidden_dim, num_heads, num_layers, ffn_dim: decoder sizes (§4.3; ffn_dim defaults to 4d).
        fake_ratio, max_instances, jitter: instance sampling (§2, §4.1).
        loss_weight: λ of the distillation loss.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        teacher_channels: int,
        student_channels: int,
        prior: PriorTensors,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 1,
        ffn_dim: int | None = None,
        fake_ratio: int = 5,
        max_instances: int = 300,
        jitter: float = 0.3,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError("hidden_dim must be even (half the position code is y, half x)")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.fake_ratio = fake_ratio
        self.max_instances = max_instances
        self.jitter = jitter
        self.loss_weight = loss_weight
        self.pos_feats = 128  # the descriptor's sine code of each centre coordinate (§4.1)
        for name in ("freq", "w_mean", "w_std", "h_mean", "h_std"):
            value = torch.as_tensor(getattr(prior, name), dtype=torch.float32)
            if value.shape != (num_classes,):
                raise ValueError(f"prior.{name} has shape {tuple(value.shape)}, expected ({num_classes},)")
            self.register_buffer(f"prior_{name}", value)

        descriptor_dim = num_classes + 2 * self.pos_feats + 2 * NUM_SCALE_BINS
        self.query_mlp = nn.Sequential(
            nn.Linear(descriptor_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.input_proj = nn.Identity() if teacher_channels == hidden_dim else nn.Linear(teacher_channels, hidden_dim)
        self.pos_proj = nn.Linear(hidden_dim, hidden_dim)
        ffn_dim = ffn_dim or 4 * hidden_dim
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.predictor = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 5),
        )
        # The 1x1-conv adapter on student tokens, one per decoder layer (each has its own W_V).
        self.adapters = nn.ModuleList(nn.Linear(student_channels, hidden_dim) for _ in range(num_layers))

    @property
    def prior(self) -> PriorTensors:
        return PriorTensors(self.prior_freq, self.prior_w_mean, self.prior_w_std, self.prior_h_mean, self.prior_h_std)

    def teacher_tokens(
        self, features: Sequence[Tensor], strides: Sequence[int], image_sizes: Sequence[tuple[int, int]]
    ) -> TeacherTokens:
        """Flatten teacher levels [B, C_t, H_l, W_l] into tokens with mask and position code."""
        level_shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        masks = valid_token_mask(level_shapes, strides, image_sizes, features[0].device)
        pos = torch.cat(
            [level_position_encoding(m, self.hidden_dim // 2).flatten(1, 2) for m in masks], dim=1
        )
        valid = torch.cat([m.flatten(1) for m in masks], dim=1)
        tokens = self.input_proj(flatten_levels(features))
        return TeacherTokens(tokens, pos * valid[..., None], valid, level_shapes)

    def instances(self, targets: list[dict[str, Tensor]], image_sizes: Sequence[tuple[int, int]]) -> Instances:
        return build_instances(
            targets, list(image_sizes), self.prior,
            fake_ratio=self.fake_ratio, max_instances=self.max_instances, jitter=self.jitter,
        )

    def queries(self, inst: Instances) -> Tensor:
        """float Tensor[B, K, d] from the instance descriptors."""
        return self.query_mlp(instance_descriptor(inst.labels, inst.centres, inst.size_px, self.num_classes))

    def forward(
        self,
        teacher_features: Sequence[Tensor],
        student_features: Sequence[Tensor] | None,
        targets: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
    ) -> dict[str, Tensor]:
        """Auxiliary losses and, when student features are given, the distillation loss.

        Args:
            teacher_features: per distilled level float Tensor[B, C_t, H_l, W_l] (no grad).
            student_features: the same levels of the student, [B, C_s, H_l, W_l], or None in the
                decoder warm-up stage (aux losses only). Detach them to train only the adapter.
            targets: boxes xyxy in pixels of the resized image, contiguous labels.
            image_sizes: (h, w) of each resized, unpadded image.
            strides: stride of each level in pixels.
        Returns:
            {"aux/idf", "aux/reg"} and, with student features, "distill/icd" (λ applied);
            each averaged over decoder layers.
        """
        teacher = self.teacher_tokens([f.detach() for f in teacher_features], strides, image_sizes)
        inst = self.instances(targets, image_sizes)
        query = self.queries(inst)
        key_in = teacher.tokens + self.pos_proj(teacher.pos)
        student_tokens = flatten_levels(student_features) if student_features is not None else None
        if student_tokens is not None and student_tokens.shape[1] != teacher.tokens.shape[1]:
            raise ValueError(
                f"student has {student_tokens.shape[1]} tokens but teacher has {teacher.tokens.shape[1]}: "
                "distilled levels must have the same strides and the same padded input"
            )

        idf, reg, distill = [], [], []
        for layer, adapter in zip(self.layers, self.adapters):
            layer_query = query
            query, keys, values = layer(layer_query, key_in, teacher.tokens, teacher.valid, return_kv=True)
            if student_tokens is not None:
                weights = layer.real_instance_weights(layer_query.detach(), keys, teacher.valid, inst.is_real)
                distill.append(
                    attention_weighted_distill_loss(
                        adapter(student_tokens), values.detach(), weights, self.num_heads, self.loss_weight
                    )
                )
            prediction = self.predictor(query)
            idf.append(identification_loss(prediction[..., 0], inst.is_real, inst.valid))
            reg.append(regression_loss(prediction[..., 1:], inst.boxes, inst.centres, inst.is_real))

        losses = {"aux/idf": torch.stack(idf).mean(), "aux/reg": torch.stack(reg).mean()}
        if distill:
            losses["distill/icd"] = torch.stack(distill).mean()
        return losses

    @torch.no_grad()
    def instance_attention(
        self,
        teacher_features: Sequence[Tensor],
        targets: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        layer_index: int = -1,
    ) -> list[list[Tensor]]:
        """Per image, per level: float Tensor[n_b, H_l, W_l], the head-averaged attention of each
        real instance on that level's tokens (for the overlays in ``viz``). Fake queries are not
        drawn; centres are jittered as in training."""
        teacher = self.teacher_tokens(teacher_features, strides, image_sizes)
        real_only = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        inst = build_instances(
            real_only, list(image_sizes), self.prior, fake_ratio=0, max_instances=0, jitter=self.jitter
        )
        query = self.queries(inst)
        key_in = teacher.tokens + self.pos_proj(teacher.pos)
        layers = list(self.layers)
        for layer in layers[:layer_index] if layer_index != -1 else layers[:-1]:
            query = layer(query, key_in, teacher.tokens, teacher.valid)
        probs = layers[layer_index].attention_probs(query, key_in, teacher.valid).mean(dim=1)  # [B, K, S]
        sizes = [h * w for h, w in teacher.level_shapes]
        out = []
        for b, n in enumerate(inst.num_real.tolist()):
            per_level = probs[b, :n].split(sizes, dim=-1)
            out.append([p.reshape(n, h, w) for p, (h, w) in zip(per_level, teacher.level_shapes)])
        return out
