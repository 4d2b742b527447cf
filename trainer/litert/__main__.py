"""`python -m trainer.litert`: writes a training job's LiteRT files (`trainer.litert.export`)."""

import sys

from trainer.litert.export import main

sys.exit(main())
