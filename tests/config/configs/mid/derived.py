# Fixture: imports one level up, then edits its own copy.
from ..base.train import train
from ..base.optim import optimizer

train.max_iter = 200
num_classes = 80  # an int: not part of the loaded config
_private = dict(a=1)  # a private name: not part of the loaded config
helper_list = [1, 2]  # a plain list: not part of the loaded config
