"""``python -m vdm_app …`` is the ``vdm`` command (also ``torchrun … -m vdm_app train …``)."""
import sys

from .cli import main

sys.exit(main())
