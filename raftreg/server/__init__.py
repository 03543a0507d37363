"""Node wiring over the consensus seam: the registry node (`node.RegistryNode`: store +
consensus, reads and proposals), the lessor (`lessor`, leader only: expiry decided here,
carried out as a replicated command), the watch hub (`watch_hub`) and the offline snapshot
restore (`restore`). The process that serves it is `raftreg.daemon`."""
