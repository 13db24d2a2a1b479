"""Flow runs get names that say what they do: `build-<root>-<time>`, `stage-refine-<root>-<time>`, ..."""

from __future__ import annotations

import asyncio
import re

from prefect import flow
from prefect.client.orchestration import get_client

from flows.runtime import fast_prefect, run_name


@flow(name="run-name-probe", flow_run_name=run_name("stage-refine", "root"))
def _probe(root: str) -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id)


def test_a_flow_run_is_named_after_its_kind_and_root(prefect_server, tmp_path) -> None:
    with fast_prefect():
        run_id = _probe(root=str(tmp_path / "demo_out"))

    async def name() -> str:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).name

    assert re.fullmatch(r"stage-refine-demo_out-\d{8}T\d{6}", asyncio.run(name()))
