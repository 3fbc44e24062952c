"""The `draft` provider: renders locally with the draft renderer; free, offline, deterministic."""

from __future__ import annotations

import asyncio
import os

from flexforge.draft import render
from flexforge.providers import GeneratedImage, TaskContext
from flexforge.request import ImageRequest


class DraftProvider:
    name = "draft"
    generator = "draft"

    def __init__(self) -> None:
        # Rendering is CPU-bound in Pillow, which releases the GIL while it works: more threads
        # than cores only queue, and fewer than two would leave a core idle while one encodes.
        self.max_in_flight = max(2, os.cpu_count() or 1)

    async def generate(self, request: ImageRequest, task: TaskContext) -> GeneratedImage:
        # No task is ever submitted, so the journal (`task`) has nothing to record.
        data = await asyncio.to_thread(render, request)
        return GeneratedImage(data=data, task_id=None, cost_credits=0.0, seed=request.seed)

    async def aclose(self) -> None:
        return None
