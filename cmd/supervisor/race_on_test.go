//go:build race

package main

// raceEnabled: the test binary has the race detector, so go run gets -race
// too and reuses the packages the test build compiled.
const raceEnabled = true
