"""The parallel embedding job: ``python -m shmstore embed`` (see :mod:`._job`)."""

from ._corpus import Chunk, directory_chunks, stdlib_chunks
from ._job import JobSummary, PassSummary, run_job

__all__ = ["Chunk", "JobSummary", "PassSummary", "directory_chunks", "run_job", "stdlib_chunks"]
