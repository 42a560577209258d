# Fixture: a lazy call whose argument is an interpolation into another top-level node.
from detrex.config import LazyCall as L

optimizer = L("torch.optim.SGD")(params=None, lr="${train.lr}", momentum=0.9)
