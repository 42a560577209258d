"""Data for the CPU shapes demos (``projects/*/configs/*_shapes_demo.py``): a short schedule from scratch.

Train: ``shapes_demo_train``, 2000 images drawn from the *same* distribution as ``shapes_train`` (its first 400
images are ``shapes_train``'s): with the demo's ~3000 iterations at batch 8 the model sees each image about 12
times instead of 60, so it learns shapes rather than memorizing images. Generated once on first use (about 20
seconds on 2 cores) into ``$DETREX_CACHE``. Augmentation: flip + short side 112/128/144 (max 192); the random crop
branch of ``shapes_detr.py`` is left out (cut shapes are harder and slow down a short schedule).

Test: ``shapes_val`` itself (100 images, short side 128, max 192), so the demo's AP is the default set's AP.
"""

from detrex.config import get_config
from detrex.data import DatasetCatalog
from detrex.data.datasets.shapes import register_shapes

# same generation parameters (and seeds) as shapes_train/shapes_val except the number of training images
if "shapes_demo_train" not in DatasetCatalog:  # config files may be loaded many times in one process
    register_shapes("shapes_demo_train", "train", num_train=2000)

# shapes_detr.py's data (batch 8, no worker processes, the same test set) with the demo's training images
dataloader = get_config("common/data/shapes_detr.py").dataloader
dataloader.train.dataset.names = "shapes_demo_train"
dataloader.train.mapper.augmentation_with_crop = None  # no random-crop branch
