"""Progress agent: per-user stream from the repartition topic into the core buffer.

Records are not acked here: the runtime acks them once the flush holding their effect
has committed (app/kafka/runtime.py).
"""

from __future__ import annotations

import faust

from app.kafka.runtime import ProgressRuntime


def make_progress_agent(app: faust.App, by_user: faust.TopicT, runtime: ProgressRuntime) -> None:
    async def progress(stream: faust.StreamT[bytes]) -> None:
        async for record in stream.noack().events():  # type: ignore[attr-defined]
            await runtime.apply(record)

    app.agent(by_user, name="progress", concurrency=1)(progress)
