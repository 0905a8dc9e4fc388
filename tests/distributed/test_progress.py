"""Progress lines of long Ray Data work (the generator the pseudo-label pass reads through)."""

from __future__ import annotations

import logging

import numpy as np

from meiju_ray.distributed.pseudo_label import rows_done


def test_rows_done_passes_batches_through_and_reports_counts(caplog):
    batches = [{"id": np.arange(n)} for n in (3, 4, 5)]
    with caplog.at_level(logging.INFO, logger="meiju_ray"):
        out = list(rows_done(iter(batches), 12, "pseudo-labelling", every_s=0.0))
    assert out == batches
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" rows")[0] for line in lines] == [
        "pseudo-labelling: 3/12",
        "pseudo-labelling: 7/12",
        "pseudo-labelling: 12/12",
    ]


def test_rows_done_rate_limits_but_always_reports_the_end(caplog):
    batches = [{"id": np.arange(2)} for _ in range(50)]
    with caplog.at_level(logging.INFO, logger="meiju_ray"):
        list(rows_done(iter(batches), 100, "pseudo-labelling", every_s=3600.0))
    assert [r.getMessage().split(" rows")[0] for r in caplog.records] == [
        "pseudo-labelling: 100/100"
    ]
