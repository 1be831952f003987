"""``python -m fastlm`` is the ``fastlm`` command."""
import sys

from .cli import main

sys.exit(main())
