"""What a trained run shows: attention maps, figures, retrieval grids and the runs report."""
