"""AWS infrastructure of the imaging AI pipeline: one construct per concern, one stack per stage."""
