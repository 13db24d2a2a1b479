"""The five-agent chain on a real H.264 clip (../shared/media) with fake backends: decoding, spans, image sizes."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.base import ImagePart
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.refiner import Refiner
from agents.reviewer import Reviewer
from agents.segmentor import Segmentor
from engine.ids import clip_id
from engine.types import Clip


def test_chain_on_a_span_of_a_real_clip(media_dir) -> None:
    path = str(media_dir / "dog.mp4")
    clip = Clip(
        clip_id=clip_id(path, 1.0, 4.0), video_uri=path, caption="a dog runs after a ball", start_s=1.0, end_s=4.0
    )
    fake = FakeChatBackend()
    # The fake reads only synthetic scenes from pixels; it cannot see a dog in a real clip, so the region
    # captioner here is scripted to name what the outlines hold.
    captioner = ScriptedChatBackend(lambda request, attempt: '{"caption": "A dog and a ball inside the outline."}')

    async def chain():
        analyzed = await Analyzer(fake).run([clip])
        annotated = await Annotator(fake, num_frames=4).run(analyzed.records)
        segmented = await Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=4, seed=0).run(annotated.records)
        reviewed = await Reviewer(captioner, fake, num_frames=2).run(segmented.records)
        return await Refiner(fake).run(reviewed.records)

    result = asyncio.run(chain())
    assert [r.noun for r in result.records] == ["dog", "ball"] and result.rejects == ()
    for record in result.records:
        assert all(30 <= index < 120 for index in record.masklet.frame_indices)  # inside [1 s, 4 s) at 29.97 fps
        assert record.review.accepted and record.detailed_caption

    scripted = ScriptedChatBackend(lambda r, a: '{"appearance": "a dog", "motion": "runs", "is_static": false}')
    asyncio.run(Annotator(scripted, num_frames=2).run(result.records[:1]))
    images = [part for part in scripted.requests[0].messages[-1].content if isinstance(part, ImagePart)]
    assert {Image.open(io.BytesIO(image.jpeg)).size for image in images} == {(448, 252)}  # 1280x720 -> 448 wide
