# Optimizers. `optimizer.params.model` is set by tools/train_net.py at run time.
#
# DETR recipes use AdamW with lr 1e-4, weight decay 1e-4 and a 0.1 LR factor on the backbone:
#   optimizer = get_config("common/optim.py").AdamW
#   optimizer.lr = 1e-4
#   optimizer.weight_decay = 1e-4
#   optimizer.params.lr_factor_func = backbone_lr_factor   # from detrex.solver (a named function,
#                                                          # so config.yaml loads back)
import torch

from detrex.config import LazyCall as L
from detrex.solver import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        # params.model: filled in with the model by train_net before instantiation
        weight_decay_norm=0.0
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)


AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # params.model: filled in with the model by train_net before instantiation
        base_lr="${..lr}",
        weight_decay_norm=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
    # One fused kernel for all parameters, on CUDA and on the CPU (4x faster than foreach on a 2-core CPU,
    # bench/README.md); it also skips a step with a non-finite loss on the device (no host sync). Where the
    # device or torch has no fused kernel, train_net falls back to foreach=True with one warning.
    fused=True,
)
