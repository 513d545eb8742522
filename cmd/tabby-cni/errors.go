package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// etcdUnreachableError says the datastore could not be reached. CNI's "try again later"
// code tells the runtime that retrying the same command can succeed, which is what a
// Calico user expects when etcd is briefly away.
type etcdUnreachableError struct {
	Endpoints []string
	Err       error
}

func (e *etcdUnreachableError) Error() string {
	return fmt.Sprintf("etcd unreachable at %s: %v", strings.Join(e.Endpoints, ","), e.Err)
}

func (e *etcdUnreachableError) Unwrap() error { return e.Err }

// checkFailedError lists what CHECK found wrong with a workload.
type checkFailedError struct {
	ContainerID string
	Problems    []string
}

func (e *checkFailedError) Error() string {
	return fmt.Sprintf("CHECK of container %s failed: %s", e.ContainerID, strings.Join(e.Problems, "; "))
}

// toCNIError turns any error of a command into the error object CNI prints on stdout: the
// code tells the runtime what kind of failure it is, the message says exactly what is wrong.
func toCNIError(err error) *types.Error {
	var (
		cniErr   *types.Error
		confErr  *configError
		nsErr    *netnsError
		etcdErr  *etcdUnreachableError
		checkErr *checkFailedError
	)
	switch {
	case errors.As(err, &cniErr):
		return cniErr
	case errors.As(err, &confErr):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.As(err, &nsErr):
		return types.NewError(types.ErrInvalidNetNS, err.Error(), "")
	case errors.As(err, &etcdErr):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	case errors.As(err, &checkErr):
		return types.NewError(types.ErrInternal, err.Error(), strings.Join(checkErr.Problems, "\n"))
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}
