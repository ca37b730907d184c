"""facecaption: an open pipeline that builds face image–caption datasets and trains a face CLIP.

Data flows one way: collect → faces → attributes → captions → quality / train → evaluate → paper.
Each stage is one sub-package with a ``main(argv)`` entry point, called by ``facecaption <stage>``.
"""

__version__ = "0.1.0"
