"""The lmms-eval model class of avmem (imports lmms-eval; reached through ``avmem.integrations.lmms_eval``)."""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from .lmms_eval import VideoQA, video_of


class AVMem(lmms):
    """avmem as an lmms-eval "simple" model: a task's ``doc_to_visual`` gives the video file, ``doc_to_text`` the
    question; every video is streamed once into a memory session and its questions answered from it.

    ``model_args``: ``pretrained`` (required), ``device``, ``dtype``, ``cg_iters``, ``seed``, any
    :class:`~avmem.session.SessionSettings` field (``fps``, ``max_pixels``, ``video_tokens``, ``audio_tokens``,
    ``use_audio``, ``use_ttt``, ``reader``, ``read_tokens``, ``budget_file``, ``incremental``, ...),
    ``cached_videos`` and ``on_error`` (see :mod:`avmem.integrations.lmms_eval`).
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.qa = VideoQA.from_model_args(model_args)

    @property
    def device(self):
        return self.qa.model.device

    @property
    def batch_size(self) -> int:
        return 1

    def _video(self, request: Instance) -> str:
        doc_to_visual, doc_id, task, split = request.args[2:6]
        return video_of(doc_to_visual(self.task_dict[task][split][doc_id]), where=f"{task} doc {doc_id}: ")

    def _by_video(self, requests: list[Instance], answer, desc: str) -> list:
        """``answer(request, video)`` for every request, taken video by video (each video streamed once while its
        questions are asked), returned in the requests' order."""
        videos = [self._video(r) for r in requests]
        first = {v: i for i, v in reversed(list(enumerate(videos)))}
        out: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=desc)
        for i in sorted(range(len(requests)), key=lambda k: (first[videos[k]], k)):
            out[i] = answer(requests[i], videos[i])
            bar.update(1)
        bar.close()
        return out

    @staticmethod
    def _prompt(context: str) -> str:
        return context.replace("<image>", "").strip()

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy replies; ``args`` = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""

        def answer(request: Instance, video: str) -> str:
            context, gen_kwargs = request.args[0], request.args[1]
            reply = self.qa.generate(video, self._prompt(context), gen_kwargs)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), reply)
            return reply

        return self._by_video(requests, answer, "avmem generate")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation), is greedy); ``args`` = (context, continuation, doc_to_visual, doc_id, task, split)."""
        if any(len(r.args) < 6 for r in requests):
            raise NotImplementedError("avmem: loglikelihood requests without a visual (unconditional scores such as "
                                      "acc_mutual_info) are not supported")

        def answer(request: Instance, video: str) -> tuple[float, bool]:
            context, continuation = request.args[0], request.args[1]
            result = self.qa.loglikelihood(video, self._prompt(context), continuation)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
            return result

        return self._by_video(requests, answer, "avmem loglikelihood")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("avmem: multi-round tasks (generate_until_multi_round) are not supported; "
                                  "use single-turn tasks")
