"""pycocotools' own COCOeval on the same results, the reference our evaluators are tested against."""

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def reference_stats(gt: COCO, results: list[dict], iou_type: str) -> dict[str, float]:
    """COCOeval's first six stats in percent, keyed AP..APl; NaN where COCO reports -1."""
    with contextlib.redirect_stdout(io.StringIO()):
        ce = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        ce.evaluate()
        ce.accumulate()
        ce.summarize()
    return {key: float("nan") if ref < 0 else ref * 100 for key, ref in zip(STAT_KEYS, ce.stats[:6])}
