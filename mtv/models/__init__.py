"""Models: the shared ViT encoder, the text tower and the offline tokenizer."""

from mtv.models.text import TextTransformer
from mtv.models.tokenizer import TextTokenizer
from mtv.models.vit import EncoderOutput, VisionTransformer

__all__ = ["EncoderOutput", "TextTokenizer", "TextTransformer", "VisionTransformer"]
