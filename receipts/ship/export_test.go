package ship

// Test helpers for the external tests (package ship_test), which run a
// real collector: receipts/collect imports this package, so they cannot be
// in it.
var (
	LogFor              = logFor
	AppendN             = appendN
	SealAll             = sealAll
	ClusterOptions      = clusterOptions
	StreamLeader        = streamLeader
	WaitShipped         = waitShipped
	CheckStreamAnyOrder = checkStreamAnyOrder
	StreamInversions    = streamInversions
	PublishHole         = publishHole
	Pace                = pace
)
