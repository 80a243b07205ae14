"""rnnwatch's model side: the recurrent forecaster, its training, evaluation and safe artifact format."""
