"""The hostile corpus replayed against the FastAPI, Flask and Django routes.

For each request: no 5xx, no hang (each request is bounded by the corpus timeout), every
rejection explained in JSON (``error`` + ``detail``), a valid ``X-Correlation-ID`` (an
invalid one is never echoed), and nothing stored for a rejected request (sagas counted in
storage before and after).
"""

from __future__ import annotations

import pytest
import sagaz_hostile_corpus as corpus

try:
    import sagaz_reliability_support as support
except ImportError:  # run on its own, outside the reliability suite
    support = None


@pytest.mark.parametrize("plugin", ["fastapi", "flask", "django"])
def test_the_corpus_gets_no_5xx_and_stores_nothing_when_rejected(
    plugin: str, request: pytest.FixtureRequest
) -> None:
    target = request.getfixturevalue(f"{plugin}_target")
    tally = corpus.Tally()
    cases = [*corpus.corpus(), corpus.valid_case(), corpus.valid_signed_case()]
    for case in cases:
        before = target.count()
        status, headers, body = target.send(case)
        corpus.check_response(case, status, headers, body, before, target.count(), tally)
    if support is not None:
        support.record(
            f"hostile replay {plugin}",
            requests=tally.requests,
            rejections=tally.rejections,
            accepted=tally.accepted,
            stored_on_rejection=tally.stored_on_rejection,
        )
    assert tally.problems == [], "\n".join(tally.problems)
    assert tally.accepted >= 2  # the valid requests went through: the app does work
    assert tally.rejections >= len(cases) - 20
