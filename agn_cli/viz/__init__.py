"""Pictures a person checks results with: CT slice previews, frame overlays."""
