import sys

from synthd.cli import main

raise SystemExit(main(sys.argv[1:]))
