"""The page's styling: the heat-map colour legend and the CSS handed to ``launch``."""

from __future__ import annotations

# The service draws heat maps with matplotlib's "inferno" (trainer.model.attention_maps);
# these are its stops.
INFERNO_STOPS = "#000004, #210c4a, #57106e, #8a226a, #bc3754, #e45a31, #f98e09, #f9cb35, #fcffa4"
LEGEND_HTML = (
    '<div class="cmap-legend">Heat maps (each head scaled to its own min and max): low '
    '<span class="cmap-bar"></span> high attention</div>'
)
CSS = f"""
#status {{min-height: 2.5em}}
.dino-gallery .grid-wrap {{min-height: 0 !important; max-height: none !important}}
.dino-gallery .thumbnail-item {{aspect-ratio: auto !important; height: auto !important}}
.dino-gallery .thumbnail-lg > img {{height: auto !important; display: block}}
.cmap-legend {{font-size: 0.9em; display: flex; align-items: center; gap: 0.5em}}
.cmap-bar {{display: inline-block; width: 220px; height: 12px; border-radius: 2px;
           background: linear-gradient(to right, {INFERNO_STOPS})}}
.composite-legend {{display: flex; flex-wrap: wrap; gap: 0.8em; font-size: 0.9em}}
.swatch-item {{display: inline-flex; align-items: center; gap: 0.3em}}
.swatch {{display: inline-block; width: 14px; height: 14px; border-radius: 2px;
         border: 1px solid #444}}
#processed img {{cursor: crosshair}}
#untrained-banner {{background: #fff1e0; border: 2px solid #d9822b; border-radius: 6px;
                    padding: 0.4em 1em}}
#stale-note {{background: #fff8d6; border-left: 5px solid #c99a00; padding: 0.3em 0.8em}}
.dino-gallery .caption-label {{font-size: 15px !important}}
.model-pick input {{padding-right: 2.2em !important; text-overflow: ellipsis}}
"""
