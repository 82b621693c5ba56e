"""inference.postprocess.draw_detections: the box border has the class's palette colour, the
inside of the box and the rest of the image stay the image, the label sits above the box."""
from __future__ import annotations

import numpy as np

from mtl_perception.inference.postprocess import PALETTE_BGR, Detections, draw_detections


def test_border_has_the_class_colour_and_the_inside_stays_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    dets = Detections(np.array([[40.0, 50.0, 100.0, 110.0], [5.0, 2.0, 30.0, 20.0]]), np.array([0.9, 0.5]),
                      np.array([3, 11]))
    out = draw_detections(image, dets, ["a", "b", "c", "car"], thickness=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, image)
    colour = PALETTE_BGR[3]
    # Box 1 covers pixels x 40..99, y 50..109; a 2-pixel border inside it.
    for y, x in [(50, 60), (51, 60), (109, 70), (108, 70), (80, 40), (80, 41), (80, 99), (80, 98), (50, 40), (109, 99)]:
        np.testing.assert_array_equal(out[y, x], colour, err_msg=f"border pixel {(y, x)}")
    np.testing.assert_array_equal(out[52:108, 42:98], image[52:108, 42:98])  # inside
    np.testing.assert_array_equal(out[111:, :], image[111:, :])  # below every box
    np.testing.assert_array_equal(out[:, 101:], image[:, 101:])  # right of every box (labels are short)
    # The label band of box 1 is just above it, in the class colour (text pixels aside).
    band = out[36:50, 40:60].reshape(-1, 3)
    assert (band == colour).all(-1).mean() > 0.5
    # Box 2 touches the image top: its label goes inside, border still drawn in its colour.
    np.testing.assert_array_equal(out[19, 10], PALETTE_BGR[11])
    np.testing.assert_array_equal(out[17, 29], PALETTE_BGR[11])  # right border, below the label


def test_no_detections_leave_the_image_and_unknown_classes_are_named_by_index():
    image = np.full((40, 50, 3), 77, np.uint8)
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    np.testing.assert_array_equal(draw_detections(image, empty, ["x"]), image)
    out = draw_detections(image, Detections(np.array([[10.0, 25.0, 30.0, 39.0]]), np.array([0.7]),
                                            np.array([42])), ["x"])
    np.testing.assert_array_equal(out[30, 10], PALETTE_BGR[42])
