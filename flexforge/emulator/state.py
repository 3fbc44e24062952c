"""The emulator's memory: tasks, credits, fault dice, and the counters tests read back."""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexforge.emulator.config import FAULT_KINDS, NO_FAULT, SUBMIT_AMBIGUOUS, EmulatorConfig
from flexforge.emulator.validation import Submission

PENDING = "Pending"
READY = "Ready"
REQUEST_MODERATED = "Request Moderated"
CONTENT_MODERATED = "Content Moderated"
TASK_FAULT_STATUS = {"error": "Error", "failed": "Failed", "unknown": "Cancelled"}


@dataclass(slots=True)
class Task:
    id: str
    flavour: str  # "bfl" or "comet": each service answers polls for its own tasks only
    submission: Submission
    seed: int
    submitted_at: float  # monotonic
    ready_at: float  # monotonic: Pending until then
    outcome: str  # the status once no longer Pending
    details: dict[str, Any] | None
    cost: float  # credits quoted in the submit answer
    charged: bool
    references: tuple[Path, ...]
    started_wall: float

    def status(self, now: float) -> str:
        # A refused prompt is known at once; everything else takes the configured latency.
        if self.outcome == REQUEST_MODERATED or now >= self.ready_at:
            return self.outcome
        return PENDING

    def progress(self, now: float) -> float:
        span = self.ready_at - self.submitted_at
        return 1.0 if span <= 0 else round(min(0.99, (now - self.submitted_at) / span), 2)


def body_digest(path: str, body: Any) -> str:
    """Identifies a submission: the route (service and model) and the canonical JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


@dataclass(slots=True)
class Stats:
    submissions: int = 0  # accepted: each created a task (and may have been charged)
    per_body: Counter[str] = field(default_factory=Counter)
    charged_credits: float = 0.0
    polls: int = 0
    downloads: int = 0
    responses: dict[str, Counter[str]] = field(default_factory=dict)  # route -> status -> n
    faults: Counter[str] = field(default_factory=Counter)
    ignored_fields: Counter[str] = field(default_factory=Counter)
    peak_in_flight: int = 0
    unanswered_tasks: int = 0  # created and charged, but the answer was a fault

    def answered(self, route: str, status: int | str) -> None:
        self.responses.setdefault(route, Counter())[str(status)] += 1


class EmulatorState:
    """Everything mutable; touched only from the server's event loop."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget every task and counter, as a freshly started server would."""
        config = self.config
        self.tasks: dict[str, Task] = {}
        self.credits = config.credits
        self.stats = Stats()
        self.captured: deque[dict[str, Any]] = deque(maxlen=config.capture_limit)
        self._pending: list[float] = []  # heap of ready_at of tasks that count as in flight
        self.rng = random.Random(config.seed)
        self._script = self._queues(config)

    def reconfigure(self, config: EmulatorConfig) -> None:
        old, self.config = self.config, config
        if config.credits != old.credits:
            self.credits = config.credits
        if config.seed != old.seed:
            self.rng = random.Random(config.seed)
        if config.script != old.script:
            self._script = self._queues(config)
        if config.capture_limit != old.capture_limit:
            self.captured = deque(self.captured, maxlen=config.capture_limit)

    @staticmethod
    def _queues(config: EmulatorConfig) -> dict[str, deque[str]]:
        queues: dict[str, deque[str]] = {phase: deque() for phase in FAULT_KINDS}
        for entry in config.script:
            phase, _, kind = entry.partition(":")
            queues[phase].append(kind)
        return queues

    def fault(self, phase: str) -> str | None:
        """The fault to inject into this request of `phase`, if any: the script first, then dice."""
        queue = self._script[phase]
        if queue:
            kind: str | None = queue.popleft()
        else:
            kind = None
            roll = self.rng.random()
            threshold = 0.0
            for name in FAULT_KINDS[phase]:
                threshold += self.config.faults.get(f"{phase}:{name}", 0.0)
                if roll < threshold:
                    kind = name
                    break
        if kind == NO_FAULT:
            kind = None
        if kind is not None:
            self.stats.faults[f"{phase}:{kind}"] += 1
        return kind

    def fault_creates_task(self) -> bool:
        """Whether an ambiguous submit fault comes after its task was created and charged."""
        return self.rng.random() < self.config.submit_fault_task_rate

    def in_flight(self, now: float) -> int:
        while self._pending and self._pending[0] <= now:
            heapq.heappop(self._pending)
        return len(self._pending)

    def latency(self) -> float:
        jitter = self.config.jitter
        return max(0.0, self.config.latency + (self.rng.uniform(-jitter, jitter) if jitter else 0.0))

    def outcome(self, prompt: str) -> tuple[str, dict[str, Any] | None]:
        """What the task will end as, decided at submission (moderation looks at the prompt)."""
        lowered = prompt.lower()
        for status, words in (
            (REQUEST_MODERATED, self.config.moderate_request),
            (CONTENT_MODERATED, self.config.moderate_content),
        ):
            hits = [word for word in words if word.lower() in lowered]
            if hits:
                return status, {"Moderation Reasons": [f"Flagged term: {word}" for word in hits]}
        fault = self.fault("task")
        if fault is not None:
            return TASK_FAULT_STATUS[fault], {"error": f"emulated generation failure ({fault})"}
        return READY, None

    def add(self, task: Task, path: str, body: Any) -> None:
        self.tasks[task.id] = task
        if task.outcome != REQUEST_MODERATED:
            heapq.heappush(self._pending, task.ready_at)
        stats = self.stats
        stats.submissions += 1
        stats.per_body[body_digest(path, body)] += 1
        stats.ignored_fields.update(task.submission.ignored)
        stats.peak_in_flight = max(stats.peak_in_flight, len(self._pending))
        if task.charged:
            self.credits -= task.cost
            stats.charged_credits += task.cost

    def snapshot(self, now: float) -> dict[str, Any]:
        stats = self.stats
        statuses = Counter(task.status(now) for task in self.tasks.values())
        return {
            "submissions": stats.submissions,
            "unique_bodies": len(stats.per_body),
            "duplicates": stats.submissions - len(stats.per_body),
            "per_body": dict(stats.per_body),
            "tasks": {"total": len(self.tasks), **dict(sorted(statuses.items()))},
            "in_flight": self.in_flight(now),
            "peak_in_flight": stats.peak_in_flight,
            "charged_credits": round(stats.charged_credits, 4),
            "credits": round(self.credits, 4),
            "polls": stats.polls,
            "downloads": stats.downloads,
            "responses": {route: dict(counts) for route, counts in stats.responses.items()},
            "faults": dict(stats.faults),
            # Submissions a client cannot know the fate of, and how many of them made a task.
            "ambiguous_submits": sum(stats.faults[f"submit:{kind}"] for kind in SUBMIT_AMBIGUOUS),
            "unanswered_tasks": stats.unanswered_tasks,
            "ignored_fields": dict(stats.ignored_fields),
        }
