"""Science on results, without Qt or torch: attention maths, the explorer's maps, metrics, model
comparison and counterfactual summaries."""
