"""`python -m onnxprune.cli ...`: the same as the `onnxprune` script."""
import sys

from onnxprune.cli import main

sys.exit(main())
