"""Where the label task puts an image: its own shape, its canvas, the rest zeros."""
import numpy as np
import pytest

from attn_contrastive.data import canvases

ASPECTS = (1.0, 4 / 3, 5 / 3, 2.0)


@pytest.mark.parametrize("image_hw, want_image, want_canvas", [
    ((375, 500), (240, 320), (240, 320)),  # 4:3 landscape: exactly the teacher's input
    ((500, 375), (320, 240), (320, 240)),  # a portrait one: the transposed canvas
    ((90, 90), (240, 240), (240, 240)),
    ((333, 500), (240, 360), (240, 400)),  # 3:2: the 5:3 canvas, 40 columns of padding
    ((500, 281), (428, 240), (480, 240)),  # 16:9 portrait on the 2:1 canvas
    ((100, 500), (96, 480), (240, 480)),  # 5:1 fit inside the 2:1 canvas, its shape kept
])
def test_own_shape_keeps_the_aspect_with_the_shorter_side_at_the_teachers(
    image_hw, want_image, want_canvas):
  image, canvas = canvases.own_hw(image_hw, 240, ASPECTS, step=4)
  assert (image, canvas) == (want_image, want_canvas)
  assert all(v % 4 == 0 for v in (*image, *canvas))  # whole map pixels at stride 4
  assert image[0] <= canvas[0] and image[1] <= canvas[1]


def test_bad_shapes_and_aspects_are_refused():
  with pytest.raises(ValueError, match="no shape"):
    canvases.own_hw((0, 5), 16, ASPECTS)
  with pytest.raises(ValueError, match="at least 1"):
    canvases.own_hw((5, 5), 16, (0.75,))


def test_on_canvas_puts_the_whole_image_top_left_and_zeros_elsewhere():
  image = np.full((10, 20, 3), 200, np.uint8)
  canvas = canvases.own_hw(image.shape[:2], 8, ASPECTS)
  out = canvases.on_canvas(image, *canvas)
  assert canvas == ((8, 16), (8, 16)) and out.shape == (8, 16, 3)
  image = np.full((20, 11, 3), 200, np.uint8)  # aspect 1.82: the 2:1 canvas
  (h, w), canvas_hw = canvases.own_hw(image.shape[:2], 8, ASPECTS)
  out = canvases.on_canvas(image, (h, w), canvas_hw)
  assert ((h, w), canvas_hw) == ((15, 8), (16, 8))
  assert np.all(out[:h, :w] == 200) and not out[h:].any()
