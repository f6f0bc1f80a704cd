"""``python -m synthd.sim --port 0 --latency-ms 200 ...``"""

import sys

from synthd.sim import main

raise SystemExit(main(sys.argv[1:]))
