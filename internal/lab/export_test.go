package lab

// What the external tests (package lab_test) check that the package
// keeps to itself.
var (
	UnderlayNet    = underlayNet
	ClusterNetwork = clusterNetwork
	StateFileName  = stateFileName
	ReadSysctl     = readSysctl
	ProcStart      = procStart
	Running        = running
)
