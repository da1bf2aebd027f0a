"""Models of the tica family."""

from .codec import CompressionModel
from .hyperprior import HyperpriorCodec
from .pixel_vit import PixelViT
from .teacher import ConvTeacher
from .tica import TicaModel

__all__ = ["CompressionModel", "ConvTeacher", "HyperpriorCodec", "PixelViT", "TicaModel"]
