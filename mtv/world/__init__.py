"""The procedural mini-world: scenes (`scene`), shapes and cameras (`geometry`), the ray-casting
renderer (`render`), captions (`captions`) and the corpus writer with its exact ground truth
(`corpus`)."""
