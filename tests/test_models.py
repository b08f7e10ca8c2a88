"""Architectures: the CIFAR ResNet-18 of the paper at its standard width and at a reduced base width."""
import pytest
import torch
from torch import nn

from src.models import build_model


def test_resnet18_width64_is_the_standard_cifar_resnet18():
    """11,173,962 parameters is the published count of ResNet-18 with a 3×3 stem and 10 classes
    (torchvision's 11,689,512 for the 7×7 stem and 1000 classes, less 9,408 − 1,728 in conv1 and
    513,000 − 5,130 in fc)."""
    model = build_model("resnet18", 10, 3)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width", [4, 8])
def test_resnet18_base_width_scales_every_stage(width):
    """Stage k (k = 1..4) has width·2^(k−1) channels and stride 2 from stage 2 on: the paper's layer
    types and strides at a fraction of the cost; 4×4 feature maps before the pool on 32×32 input
    (strides 1, 2, 2, 2: 32/8 = 4)."""
    model = build_model("resnet18", 7, 3, width)
    for k in range(1, 5):
        stage = getattr(model, f"layer{k}")
        assert [b.conv2.out_channels for b in stage] == [width * 2 ** (k - 1)] * 2
        assert stage[0].conv1.stride == ((1, 1) if k == 1 else (2, 2))
    assert model.fc.in_features == 8 * width and model.fc.out_features == 7
    feats = model.layer4(model.layer3(model.layer2(model.layer1(model.relu(model.bn1(model.conv1(
        torch.zeros(1, 3, 32, 32))))))))
    assert feats.shape == (1, 8 * width, 4, 4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # 1 stem + 16 block convs + 3 projection shortcuts


def test_unknown_model_and_bad_width_are_refused():
    with pytest.raises(ValueError, match="allowed: resnet18, smallcnn, wrn28_2, vgg11_bn"):
        build_model("vgg", 10, 3)
    from src.validate import ConfigError, validate
    from _main_runner import compose

    with pytest.raises(ConfigError, match="model.width=0: must be an integer ≥ 1"):
        validate(compose(["model=resnet18", "model.width=0"]))
