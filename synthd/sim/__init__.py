"""An OpenAI-compatible completion API simulator: test double, demo backend, benchmark target.

``async with running_sim(SimConfig(port=0)) as sim:`` serves in the current loop;
``main(argv)`` is the CLI (``python -m synthd.sim``, ``synthd sim``).
"""

from synthd.sim.config import SimConfig
from synthd.sim.run import RunningSim, main, running_sim
from synthd.sim.server import make_app

__all__ = ["RunningSim", "SimConfig", "main", "make_app", "running_sim"]
