# Fixture: two levels of relative imports; `train` comes from base directly, `derived_train` via mid/derived.
from .base.train import train
from .mid.derived import train as derived_train
from .mid.derived import optimizer

train.name = "top"
