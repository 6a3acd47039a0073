"""What an instrument's driver and its twin share, so neither imports the other: the
instrument base, SCPI errors and reply parsers, the crossbar's weight mapping and tiling,
the OPU's wire protocol and front end, SLM and camera geometry, frame checks."""
