"""Files in and out, safely: the vitops weight file, bounded readers of safetensors headers and
JSON, atomic outputs and the output-folder policy, temporaries and their sweep, SIGTERM, and
image files read header first.

    weight_file        the vitops .safetensors file: atomic save, strict and bounded load
    safetensors_header a safetensors header read and checked before any tensor
    bounded_json       JSON from outside, parsed within bounds
    temporary          temporary names, atomic single-file outputs, the sweep after a kill
    output_folder      output folders that appear whole, and what may be replaced
    signals            SIGTERM as a clean exit
    image_file         image files decoded after their header's size is checked
    image_header       an image's size from its header, for the formats Pillow cannot open
"""
