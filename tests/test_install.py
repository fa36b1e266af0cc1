"""The pinned torch/torchvision pair imports and runs a torchvision C++ operator (the known failure is
'operator torchvision::nms does not exist')."""

import torch


def test_torchvision_nms_runs():
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_packages_import():
    import oe_common
    import oe_text
    import oe_vision

    assert oe_common and oe_text and oe_vision
