"""Mapping OpenAI's image request onto providers that speak another API, written once for every
plugin (exported through ``gateway.provider``):

- ``nearest_aspect`` / ``snap_dimensions`` (``sizes``): ``size`` as an aspect ratio and size
  class, or as width/height on a grid; each returns the note to pass to ``call.note()``.
- ``fan_out`` (``fanout``): ``n`` split into concurrent calls, partial failures reported.
- ``convert_images`` (``formats``): the requested ``output_format`` made by Pillow off the loop.
- ``allowed_url`` (``hosts``): a URL an upstream hands back, checked against its domains first.
- ``multipart_body`` (``multipart``): a form-data body for ``UpstreamHTTP.request``.
- ``images_result`` (``result``): images (+ usage when reported) as OpenAI's images response.
"""

from gateway.mapping.fanout import DEFAULT_MAX_CONCURRENT, fan_out, split_counts
from gateway.mapping.formats import convert_images
from gateway.mapping.hosts import allowed_url, host_allowed
from gateway.mapping.multipart import FilePart, multipart_body
from gateway.mapping.result import Batch, GeneratedImage, image_format, image_size, images_result, merged_usage
from gateway.mapping.sizes import K_CLASSES, AspectChoice, Dimensions, GridRule, nearest_aspect, parse_size, snap_dimensions

__all__ = [
    "DEFAULT_MAX_CONCURRENT", "K_CLASSES", "AspectChoice", "Batch", "Dimensions", "FilePart", "GeneratedImage",
    "GridRule", "allowed_url", "convert_images", "fan_out", "host_allowed", "image_format", "image_size",
    "images_result", "merged_usage", "multipart_body", "nearest_aspect", "parse_size", "snap_dimensions",
    "split_counts",
]
