-- FlexMeasures' migrations need these (run once, when flexmeasures-db initialises its volume).
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;
