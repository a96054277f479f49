import sys

from robustreg.cli import main

sys.exit(main())
