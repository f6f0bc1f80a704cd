"""synthd.admission: a feeder's end is told however it comes, since once mode waits on it."""

from __future__ import annotations

import pytest

from synthd.admission import Admission
from tests.helpers import Workdir, assemble, simple_job, write_provider_config

NOWHERE = "http://127.0.0.1:9/v1"


def test_a_feeder_that_dies_still_ends_its_job_so_once_mode_and_its_stages_can_end(
    work: Workdir,
) -> None:
    jobs = simple_job("q") + simple_job("a", **{"from": '"q"'})
    parts = assemble(work, write_provider_config(work, NOWHERE, jobs))
    try:
        admission = Admission(parts.cfg, parts.writer, parts.jobs)
        stage_woken = admission.stage_events["a"]
        with admission.job_feeding("a"):  # the stage's feeder, waiting on its upstream
            with pytest.raises(OSError), admission.job_feeding("q"):
                assert admission.feeding == 2 and not admission.upstream_finished("q")
                raise OSError("the spool's disk went away")
            assert admission.upstream_finished("q") and stage_woken.is_set()
            assert not admission.quiet.is_set()  # the stage is still feeding
        assert admission.feeding == 0 and admission.quiet.is_set()
    finally:
        parts.cp.close()


def test_a_file_being_read_keeps_the_run_from_being_quiet(work: Workdir) -> None:
    parts = assemble(work, write_provider_config(work, NOWHERE, simple_job("q")))
    try:
        admission = Admission(parts.cfg, parts.writer, parts.jobs)
        with admission.reading():
            assert admission.outstanding == 1
            with admission.job_feeding("q"):
                pass
            assert not admission.quiet.is_set()
        assert admission.outstanding == 0
        admission.committed([])  # the next commit finds nothing left
        assert admission.quiet.is_set()
    finally:
        parts.cp.close()
