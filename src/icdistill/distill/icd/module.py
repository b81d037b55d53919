"""The ICD module: instance encoder, decoder, auxiliary predictor and distillation adapter.

docs/method.md describes each part. It takes feature maps, targets and image sizes -- never a detector -- so any
detector whose distilled levels align between teacher and student can use it.

Shapes: B images, K instance slots, S tokens (all levels flattened row-major and concatenated,
finest level first), d hidden width, H heads, d_h = d / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.distill.icd.ablation import ABLATION_WEIGHTS, ablation_weights
from icdistill.distill.core.inputs import DistillInputs, valid_token_mask
from icdistill.distill.icd.losses import (
    NUM_SCALE_BINS,
    attention_weighted_distill_loss,
    axis_position_codes,
    identification_loss,
    instance_descriptor,
    point_position_code,
    regression_loss,
    split_heads,
)
from icdistill.distill.core.method import DistillMethod, MethodOptim
from icdistill.distill.icd.sampling import Instances, PriorTensors, build_instances

# Queries processed at once when the real instances' attention is summed (docs/method.md, "Distillation loss"):
# memory is O(B·H·chunk·S) instead of O(B·H·K·S).
ATTENTION_CHUNK = 16


@dataclass
class TeacherTokens:
    """Teacher features flattened for the decoder.

    Attributes:
        tokens: float Tensor[B, S, C_t], the teacher's levels as they are (the input projection
            is folded into W_K and W_V, see :meth:`ICDModule.keys_and_values`).
        pos_rows, pos_cols: per level float Tensor[B, H_l, d/2] and [B, W_l, d/2], the y and x
            halves of the sine position encoding; the code of valid token (y, x) is
            [pos_rows[y] | pos_cols[x]].
        valid: bool Tensor[B, S], False on padded tokens.
        level_shapes: (H_l, W_l) of each level, in token order.
    """

    tokens: Tensor
    pos_rows: list[Tensor]
    pos_cols: list[Tensor]
    valid: Tensor
    level_shapes: list[tuple[int, int]]

    def position_encoding(self) -> Tensor:
        """The full code, float Tensor[B, S, d], zero on padded tokens (for tests and reference
        implementations; training never materialises it)."""
        per_level = []
        for rows, cols, (h, w) in zip(self.pos_rows, self.pos_cols, self.level_shapes):
            grid = torch.cat([rows[:, :, None].expand(-1, h, w, -1), cols[:, None].expand(-1, h, w, -1)], dim=-1)
            per_level.append(grid.flatten(1, 2))
        return torch.cat(per_level, dim=1) * self.valid[..., None]


def flatten_levels(features: Sequence[Tensor]) -> Tensor:
    """[B, C, H_l, W_l] per level -> float Tensor[B, S, C], row-major per level, levels concatenated."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)


def code_heads(code: Tensor, num_heads: int) -> Tensor:
    """A [code_y | code_x] sine code float Tensor[B, N, d] split into heads [B, H, N, d/H] so that
    every head holds the same frequencies of both axes (head h: y dims and x dims
    [h·d/2H, (h+1)·d/2H)). A head's code product is then a row term plus a column term, which
    the softmax turns into a 2-D bump around the query's centre, not a band along one axis."""
    b, n, d = code.shape
    half = d // 2
    by_axis = code.view(b, n, 2, num_heads, half // num_heads)  # [B, N, axis, H, d/2H]
    return by_axis.permute(0, 3, 1, 2, 4).reshape(b, num_heads, n, d // num_heads)


class DecoderLayer(nn.Module):
    """Cross-attention from instance queries to teacher tokens, then FFN; post-norm, no dropout,
    no self-attention between queries (the paper's decoder).

    With ``position_prior`` (this project's design, not the paper's; ``distill.icd.position_prior``)
    the attention logits of head h gain λ_h·⟨P_q, P_k⟩/√d_h: P_k is head h's slice of the
    token's own 2-D sine code (the code the keys are built from; each head takes the same
    frequencies of both axes, :func:`code_heads`), P_q the same code evaluated at the query's
    jittered centre, λ_h a **fixed** per-head kernel width (``position_scale``, a buffer that no
    optimiser sees). Queries then carry their position into the attention directly, as in
    Conditional DETR / DAB-DETR, instead of only through the query MLP; it is implemented by
    appending [λ_h·P_q] to each head's query and [P_k] to its key (see
    :meth:`ICDModule.keys_and_values`).

    λ_h is fixed rather than learned because, as a parameter in the decoder's AdamW group
    (LR <= 1e-3, started at 64), it moved by ~0.3 in a whole run: it was a fixed kernel in
    practice. Naming it fixed keeps that behaviour and makes the kernel width an explicit
    configuration choice that a validation comparison can vary, instead of a "learned" scale
    that does not learn.

    ``content=False`` (diagnostics only) drops the learned content logits q·k: the attention is
    then the position kernel alone, the reference against which the diagnostics measure what
    the decoder learned.
    """

    def __init__(
        self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024, position_prior: bool = False,
        position_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        # A buffer, not a parameter: saved with the module, never optimised (see the class docstring).
        scale = torch.full((num_heads,), float(position_scale)) if position_prior else None
        self.register_buffer("position_scale", scale)

    def query_heads(self, query: Tensor, query_code: Tensor | None = None, content: bool = True) -> Tensor:
        """[B, K, d] -> [B, H, K, d_h] (with the position prior: [B, H, K, 2·d_h], the scaled
        code of the query's centre appended; ``query_code`` [B, K, d]). ``content=False``: the
        learned part of the query is zeroed, so only the position kernel shapes the attention."""
        q = split_heads(self.q_proj(query), self.num_heads)
        if not content:
            q = torch.zeros_like(q)
        if self.position_scale is None:
            return q
        code = code_heads(query_code, self.num_heads) * self.position_scale[None, :, None, None]
        return torch.cat([q, code], dim=-1)

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor, valid: Tensor, query_code: Tensor | None = None,
        content: bool = True,
    ) -> Tensor:
        """query: [B, K, d]; keys [B, H, S, d_h] (or [B, H, S, 2·d_h] with the position prior) and
        values [B, S, d] from :meth:`ICDModule.keys_and_values`; valid: bool [B, S];
        query_code [B, K, d] with the position prior -> g: [B, K, d]."""
        q = self.query_heads(query, query_code, content)
        # A fused kernel: the decoder output never needs the attention matrix itself.
        attended = F.scaled_dot_product_attention(
            q, keys, split_heads(values, self.num_heads), attn_mask=valid[:, None, None, :],
            **({} if self.position_scale is None else {"scale": 1.0 / math.sqrt(self.head_dim)}),
        )
        attended = attended.transpose(1, 2).flatten(2)
        u = self.norm1(query + self.out_proj(attended))
        return self.norm2(u + self.ffn(u))

    def attention_probs(
        self, query: Tensor, keys: Tensor, valid: Tensor, query_code: Tensor | None = None, content: bool = True,
    ) -> Tensor:
        """Softmax attention over all tokens: float Tensor[B, H, K, S] (for small K only)."""
        q = self.query_heads(query, query_code, content)
        logits = q @ keys.transpose(-1, -2) / math.sqrt(self.head_dim)
        return logits.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(dim=-1)

    @torch.no_grad()
    def real_instance_weights(
        self, query: Tensor, keys: Tensor, valid: Tensor, is_real: Tensor, chunk: int = ATTENTION_CHUNK,
        query_code: Tensor | None = None,
    ) -> Tensor:
        """w[b,h,s] = Σ_{i real in b} softmax_s(a[b,h,i,s]), detached (the paper's attention weights).

        Args:
            query: [B, K, d], the layer's input queries; keys: [B, H, S, d_h] from
                :meth:`ICDModule.keys_and_values`; query_code: [B, K, d] with the position prior.
        Real slots are [0, n_b), so only the first max_b n_b queries are visited, ``chunk`` at a
        time. Returns float Tensor[B, H, S] with Σ_s w[b,h,s] = n_b.
        """
        batch = query.shape[0]
        num_tokens = keys.shape[2]
        weights = query.new_zeros(batch, self.num_heads, num_tokens)
        max_real = int(is_real.sum(dim=1).max()) if is_real.numel() else 0
        if max_real == 0:
            return weights
        # Logits as keys @ queries^T ([B, H, S, chunk]): the large key tensor is the left operand
        # as it is stored, so no transposed copy of it is ever made.
        k = keys.detach()
        scale = 1.0 / math.sqrt(self.head_dim)
        invalid = ~valid[:, None, :, None]
        for start in range(0, max_real, chunk):
            stop = min(start + chunk, max_real)
            code = query_code[:, start:stop] if query_code is not None else None
            q = self.query_heads(query[:, start:stop], code)
            probs = (k @ q.transpose(-1, -2) * scale).masked_fill(invalid, float("-inf")).softmax(dim=-2)
            real = is_real[:, start:stop].to(probs.dtype)[:, None, None, :]
            weights += (probs * real).sum(dim=-1)
        return weights


class ICDModule(DistillMethod):
    """``distill.method: icd``. Everything ICD trains besides the student: query MLP, decoder,
    predictor, adapter.

    Args:
        num_classes: C, contiguous class ids 0..C-1.
        teacher_channels: C_t of the teacher's distilled levels.
        student_channels: C_s of the student's distilled levels.
        prior: the training set's prior (freq, w/h mean and std per class, each [C]).
        hidden_dim, num_heads, num_layers, ffn_dim: decoder sizes (ffn_dim defaults to 4d).
        fake_ratio, max_instances, jitter: instance sampling.
        loss_weight: λ of the distillation loss.
        position_prior: this project's position term in the attention logits (see
            :class:`DecoderLayer`); False is the paper's decoder. ``position_scale``: λ_h, the
            fixed kernel width of every head.
        diagnostic_images: held-out images the diagnostics of :meth:`evaluate` use.
        ablation_weights: None (ICD: the decoder's attention weights the distillation loss) or
            an ablation's token weights, ``uniform`` / ``gt_box`` (:mod:`~icdistill.distill.icd.ablation`;
            this project's ablation switch). The auxiliary task trains the same either way.
        optim: its own AdamW (the release's: LR 1e-4, weight decay 1e-4, L2-norm clip 0.01).
        method_only_iters: the decoder warm-up stage (``distill.icd.decoder_warmup_iters``).
        seed: seeds the module's own generator for fake instances and centre jitter
            (``solver.seed``). Drawing them from the global generator would shift the RoI
            sampling of a two-stage student, so a distilled run would not see its baseline's
            samples; the generator's state is saved with the module's state (checkpoints).
    """

    name = "icd"

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
        optim: MethodOptim = MethodOptim(clip_norm=0.01),
        method_only_iters: int = 0,
        position_prior: bool = False,
        position_scale: float = 1.0,
        diagnostic_images: int = 32,
        ablation_weights: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(optim, method_only_iters=method_only_iters)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._saved_generator: Tensor | None = None  # from a checkpoint, applied on first use
        if ablation_weights is not None and ablation_weights not in ABLATION_WEIGHTS:
            raise ValueError(f"ablation_weights is {ablation_weights!r}; valid: None, {', '.join(ABLATION_WEIGHTS)}")
        self.ablation_weights = ablation_weights
        self.position_prior = position_prior
        self.diagnostic_images = diagnostic_images
        if hidden_dim % 2:
            raise ValueError("hidden_dim must be even (half the position code is y, half x)")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.fake_ratio = fake_ratio
        self.max_instances = max_instances
        self.jitter = jitter
        self.loss_weight = loss_weight
        self.pos_feats = 128  # the descriptor's sine code of each centre coordinate (the paper's query)
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
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, num_heads, ffn_dim, position_prior=position_prior, position_scale=position_scale)
            for _ in range(num_layers)
        )
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
        """Flatten teacher levels [B, C_t, H_l, W_l] into tokens with mask and per-axis position codes."""
        level_shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        masks = valid_token_mask(level_shapes, strides, image_sizes, features[0].device)
        codes = [axis_position_codes(m, self.hidden_dim // 2) for m in masks]
        valid = torch.cat([m.flatten(1) for m in masks], dim=1)
        return TeacherTokens(
            flatten_levels(features), [c[0] for c in codes], [c[1] for c in codes], valid, level_shapes
        )

    def keys_and_values(self, layer: DecoderLayer, teacher: TeacherTokens) -> tuple[Tensor, Tensor]:
        """K = W_K·(T' + W_P·PE) split into heads, V = W_V·T', with T' = input_proj(T).

        Computed with folded weights, exactly equal in real arithmetic: W_K·W_in and W_V·W_in
        act on the C_t-wide tokens directly (no d-wide T' is formed), and since PE is
        [code_y | code_x], W_K·W_P·PE is a per-row plus a per-column term, projected for
        H_l + W_l codes instead of H_l·W_l tokens. At small C_t this removes most of the
        token-side work. Padded tokens get meaningless keys; every softmax masks them out.

        With the position prior each head's keys get the head's slice of the tokens' own sine
        code appended (see :class:`DecoderLayer`).

        Returns:
            keys float Tensor[B, H, S, d_h] ([B, H, S, 2·d_h] with the position prior), values
            float Tensor[B, S, d].
        """
        w_k, b_k = layer.k_proj.weight, layer.k_proj.bias
        w_v, b_v = layer.v_proj.weight, layer.v_proj.bias
        if isinstance(self.input_proj, nn.Linear):
            w_in, b_in = self.input_proj.weight, self.input_proj.bias
            b_k, b_v = b_k + w_k @ b_in, b_v + w_v @ b_in
            token_k, token_v = w_k @ w_in, w_v @ w_in
        else:
            token_k, token_v = w_k, w_v
        pos_k = w_k @ self.pos_proj.weight  # [d, d]: columns [:d/2] act on code_y, [d/2:] on code_x
        half = self.hidden_dim // 2
        pos_terms = []
        for rows, cols, (h, w) in zip(teacher.pos_rows, teacher.pos_cols, teacher.level_shapes):
            by_row = rows @ pos_k[:, :half].T  # [B, H_l, d]
            by_col = cols @ pos_k[:, half:].T  # [B, W_l, d]
            pos_terms.append((by_row[:, :, None] + by_col[:, None]).flatten(1, 2))
        keys = F.linear(teacher.tokens, token_k, b_k + w_k @ self.pos_proj.bias) + torch.cat(pos_terms, dim=1)
        values = F.linear(teacher.tokens, token_v, b_v)
        keys = split_heads(keys, self.num_heads)
        if layer.position_scale is not None:
            keys = torch.cat([keys, code_heads(teacher.position_encoding(), self.num_heads)], dim=-1)
        return keys, values

    def instances(self, targets: list[dict[str, Tensor]], image_sizes: Sequence[tuple[int, int]]) -> Instances:
        """Real and fake instance slots, drawn from the module's own generator."""
        return build_instances(
            targets, list(image_sizes), self.prior, fake_ratio=self.fake_ratio, max_instances=self.max_instances,
            jitter=self.jitter, generator=self.generator(),
        )

    def generator(self) -> torch.Generator:
        """The generator of fake instances and jitter, on the module's device. Made on first use
        (the module may be moved after it is built) from the checkpointed state, or from
        ``seed`` (plus 1000003 per rank under torch.distributed, so ranks draw different fakes as
        the engine's per-rank seeds do). A state saved on another device type (its size differs:
        CPU and CUDA generators keep different states) starts it anew from the seed."""
        device = self.prior_freq.device
        if self._generator is not None and self._generator.device == device:
            return self._generator
        self._generator = torch.Generator(device=device)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        saved, self._saved_generator = self._saved_generator, None
        if saved is not None and rank == 0 and saved.numel() == self._generator.get_state().numel():
            self._generator.set_state(saved)
        else:
            self._generator.manual_seed(self.seed + 1000003 * rank)
        return self._generator

    def get_extra_state(self) -> Tensor:
        """The generator's state (uint8 Tensor[N], empty before the first draw) in the module's
        state dict, so a resumed run draws on exactly. A plain tensor, as every other entry of a
        checkpoint's trainable state."""
        if self._generator is not None:
            return self._generator.get_state()
        return self._saved_generator if self._saved_generator is not None else torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        state = torch.as_tensor(state).to("cpu", torch.uint8)  # map_location may have moved it
        self._generator, self._saved_generator = None, state if state.numel() else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the module had its own generator: start it from the seed.
        state_dict.setdefault(prefix + "_extra_state", torch.zeros(0, dtype=torch.uint8))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def queries(self, inst: Instances) -> Tensor:
        """float Tensor[B, K, d] from the instance descriptors."""
        return self.query_mlp(instance_descriptor(inst.labels, inst.centres, inst.size_px, self.num_classes))

    def query_codes(self, inst: Instances) -> Tensor | None:
        """With the position prior, the keys' sine code at each query's centre [B, K, d]; else None."""
        return point_position_code(inst.centres, self.hidden_dim // 2) if self.position_prior else None

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """The slot's call: :meth:`losses` on the distilled levels (student levels None in the
        decoder warm-up stage)."""
        return self.losses(inputs.teacher_levels, inputs.student_levels, inputs.targets, inputs.image_sizes,
                           inputs.strides)

    def losses(
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
            {"distill/icd/idf", "distill/icd/reg"} (the auxiliary task) and, with student
            features, "distill/icd/feature" (λ applied); each averaged over decoder layers.
        """
        teacher = self.teacher_tokens([f.detach() for f in teacher_features], strides, image_sizes)
        inst = self.instances(targets, image_sizes)
        query, code = self.queries(inst), self.query_codes(inst)
        student_tokens = flatten_levels(student_features) if student_features is not None else None
        if student_tokens is not None and student_tokens.shape[1] != teacher.tokens.shape[1]:
            raise ValueError(
                f"student has {student_tokens.shape[1]} tokens but teacher has {teacher.tokens.shape[1]}: "
                "distilled levels must have the same strides and the same padded input"
            )

        idf, reg, distill = [], [], []
        fixed = None  # an ablation's weights: the same for every layer
        if student_tokens is not None and self.ablation_weights is not None:
            fixed = ablation_weights(self.ablation_weights, inst, teacher.valid, teacher.level_shapes, strides,
                                     image_sizes, self.num_heads)
        for layer, adapter in zip(self.layers, self.adapters):
            layer_query = query
            keys, values = self.keys_and_values(layer, teacher)
            query = layer(layer_query, keys, values, teacher.valid, code)
            if student_tokens is not None:
                weights = fixed if fixed is not None else layer.real_instance_weights(
                    layer_query.detach(), keys, teacher.valid, inst.is_real, query_code=code)
                distill.append(
                    attention_weighted_distill_loss(
                        adapter(student_tokens), values.detach(), weights, self.num_heads, self.loss_weight
                    )
                )
            prediction = self.predictor(query)
            idf.append(identification_loss(prediction[..., 0], inst.is_real, inst.valid))
            reg.append(regression_loss(prediction[..., 1:], inst.boxes, inst.centres, inst.is_real))

        losses = {"distill/icd/idf": torch.stack(idf).mean(), "distill/icd/reg": torch.stack(reg).mean()}
        if distill:
            losses["distill/icd/feature"] = torch.stack(distill).mean()
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
        drawn; centres are jittered as in training, from a generator of their own (seeded with
        ``seed``), so drawing pictures moves neither the global stream nor the training one."""
        teacher = self.teacher_tokens(teacher_features, strides, image_sizes)
        real_only = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        generator = torch.Generator(device=self.prior_freq.device).manual_seed(self.seed)
        inst = build_instances(
            real_only, list(image_sizes), self.prior, fake_ratio=0, max_instances=0, jitter=self.jitter,
            generator=generator,
        )
        probs = self.attention(teacher, inst, layer_index).mean(dim=1)  # [B, K, S]
        sizes = [h * w for h, w in teacher.level_shapes]
        out = []
        for b, n in enumerate(inst.num_real.tolist()):
            per_level = probs[b, :n].split(sizes, dim=-1)
            out.append([p.reshape(n, h, w) for p, (h, w) in zip(per_level, teacher.level_shapes)])
        return out

    @torch.no_grad()
    def attention(self, teacher: TeacherTokens, inst: Instances, layer_index: int = -1, content: bool = True) -> Tensor:
        """Softmax attention of every query of ``inst`` in decoder layer ``layer_index``:
        float Tensor[B, H, K, S] (for small K only). ``content=False``: every layer attends with
        the position kernel alone (see :class:`DecoderLayer`)."""
        query, code = self.queries(inst), self.query_codes(inst)
        layers = list(self.layers)
        for layer in layers[:layer_index] if layer_index != -1 else layers[:-1]:
            query = layer(query, *self.keys_and_values(layer, teacher), teacher.valid, code, content)
        last = layers[layer_index]
        keys, _ = self.keys_and_values(last, teacher)
        return last.attention_probs(query, keys, teacher.valid, code, content)

    @torch.no_grad()
    def predictions(self, teacher: TeacherTokens, inst: Instances, content: bool = True) -> Tensor:
        """The auxiliary head's output after the last layer: float Tensor[B, K, 5] (idf logit,
        then the box regression). ``content=False`` as in :meth:`attention`."""
        query, code = self.queries(inst), self.query_codes(inst)
        for layer in self.layers:
            query = layer(query, *self.keys_and_values(layer, teacher), teacher.valid, code, content)
        return self.predictor(query)

    def evaluate(
        self, *, teacher: nn.Module, dataset, levels: Sequence[str], strides: Sequence[int], device: torch.device,
    ) -> dict[str, float]:
        """``icd/idf_auroc``, ``icd/attn_in_box``, ``icd/attn_in_box_uniform``, ``icd/attn_distinct``
        (see :mod:`~icdistill.distill.icd.diagnostics`)."""
        from icdistill.distill.icd.diagnostics import icd_diagnostics

        return icd_diagnostics(self, teacher, dataset, levels, strides, device, max_images=self.diagnostic_images)

    def warnings(self, metrics: dict[str, float]) -> list[str]:
        from icdistill.distill.icd.diagnostics import diagnostic_warnings

        return diagnostic_warnings(metrics, position_prior=self.position_prior)

    def save_pictures(
        self, *, teacher: nn.Module, dataset, levels: Sequence[str], strides: Sequence[int],
        out_dir: Path, count: int, device: torch.device,
    ) -> list[Path]:
        """``attention_<image id>.png``: each real instance's decoder attention (see
        :func:`~icdistill.distill.icd.pictures.save_attention_examples`)."""
        from icdistill.distill.icd.pictures import save_attention_examples

        return save_attention_examples(self, teacher, dataset, levels, strides, out_dir, count, device)
