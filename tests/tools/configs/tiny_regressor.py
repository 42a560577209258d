# A tiny CPU-fast config for tests of tools/train_net.py: an MLP regressor on an in-memory
# dataset (detrex.utils.testing), with the common train/optim/schedule configs.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.solver import WarmupParamScheduler, backbone_lr_factor
from detrex.utils.testing import (
    InMemoryTestLoader,
    InMemoryTrainLoader,
    TinyRegressionDataset,
    TinyRegressionEvaluator,
    TinyRegressor,
)

train = get_config("common/train.py").train
train.device = "cpu"
train.max_iter = 6
train.seed = 7
train.log_period = 1
train.eval_period = 3
train.checkpointer.period = 3
train.output_dir = "./output/tiny"

model = L(TinyRegressor)(in_dim=4, hidden_dim=16, out_dim=2)

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 1e-2
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = backbone_lr_factor

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[4, 6]),
    warmup_length=2 / 6,
    warmup_method="linear",
    warmup_factor=0.1,
)

dataloader = dict(
    train=L(InMemoryTrainLoader)(
        dataset=L(TinyRegressionDataset)(num_samples=32, seed=0),
        total_batch_size=8,
        seed=0,
    ),
    test=L(InMemoryTestLoader)(
        dataset=L(TinyRegressionDataset)(num_samples=16, seed=0),
        batch_size=4,
    ),
    evaluator=L(TinyRegressionEvaluator)(),
)
