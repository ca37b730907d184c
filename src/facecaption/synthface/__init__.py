"""synthface: a procedural renderer of face images with known ground truth (boxes, landmarks, attributes)."""

from facecaption.synthface.render import (
                                          DEGRADATIONS,
                                          DRAWABLE,
                                          render_aligned,
                                          render_face,
                                          render_image,
                                          sample_attributes,
                                          sample_identity,
)

__all__ = ["DRAWABLE", "DEGRADATIONS", "sample_identity", "sample_attributes", "render_face", "render_image",
           "render_aligned"]
