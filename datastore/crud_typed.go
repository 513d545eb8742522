package datastore

import "context"

// Typed CRUD for each kind. Each method is the untyped one of crud.go for one kind; see
// there for the semantics (defaults, validation, compare-and-swap).

// typed converts the result of an untyped call to its concrete type.
func typed[R Resource](r Resource, err error) (R, error) {
	if err != nil {
		var zero R
		return zero, err
	}
	return r.(R), nil
}

// typedList converts a list of one kind to its concrete type.
func typedList[R Resource](l ResourceList, err error) ([]R, error) {
	if err != nil {
		return nil, err
	}
	out := make([]R, 0, len(l.Items))
	for _, r := range l.Items {
		out = append(out, r.(R))
	}
	return out, nil
}

// GetIPPool reads one pool; a missing one wraps ErrNotFound.
func (c *Client) GetIPPool(ctx context.Context, name string) (*IPPool, error) {
	return typed[*IPPool](c.GetResource(ctx, KindIPPool, name))
}

// ListIPPools reads every pool (documents that do not decode are left out).
func (c *Client) ListIPPools(ctx context.Context) ([]*IPPool, error) {
	return typedList[*IPPool](c.ListResources(ctx, KindIPPool))
}

// CreateIPPool stores a new pool; an existing one wraps ErrAlreadyExists.
func (c *Client) CreateIPPool(ctx context.Context, p *IPPool) (*IPPool, error) {
	return typed[*IPPool](c.CreateResource(ctx, p))
}

// UpdateIPPool replaces a stored pool, conditional on its resourceVersion when set.
func (c *Client) UpdateIPPool(ctx context.Context, p *IPPool) (*IPPool, error) {
	return typed[*IPPool](c.UpdateResource(ctx, p))
}

// ApplyIPPool creates or updates a pool.
func (c *Client) ApplyIPPool(ctx context.Context, p *IPPool) (*IPPool, error) {
	return typed[*IPPool](c.ApplyResource(ctx, p))
}

// DeleteIPPool deletes a pool, conditional on resourceVersion unless it is "".
func (c *Client) DeleteIPPool(ctx context.Context, name, resourceVersion string) (*IPPool, error) {
	return typed[*IPPool](c.DeleteResource(ctx, KindIPPool, name, resourceVersion))
}

// GetBGPConfiguration reads one BGP configuration; a missing one wraps ErrNotFound.
func (c *Client) GetBGPConfiguration(ctx context.Context, name string) (*BGPConfiguration, error) {
	return typed[*BGPConfiguration](c.GetResource(ctx, KindBGPConfiguration, name))
}

// ListBGPConfigurations reads every BGP configuration (documents that do not decode are left out).
func (c *Client) ListBGPConfigurations(ctx context.Context) ([]*BGPConfiguration, error) {
	return typedList[*BGPConfiguration](c.ListResources(ctx, KindBGPConfiguration))
}

// CreateBGPConfiguration stores a new BGP configuration; an existing one wraps ErrAlreadyExists.
func (c *Client) CreateBGPConfiguration(ctx context.Context, cfg *BGPConfiguration) (*BGPConfiguration, error) {
	return typed[*BGPConfiguration](c.CreateResource(ctx, cfg))
}

// UpdateBGPConfiguration replaces a stored BGP configuration, conditional on its resourceVersion when set.
func (c *Client) UpdateBGPConfiguration(ctx context.Context, cfg *BGPConfiguration) (*BGPConfiguration, error) {
	return typed[*BGPConfiguration](c.UpdateResource(ctx, cfg))
}

// ApplyBGPConfiguration creates or updates a BGP configuration.
func (c *Client) ApplyBGPConfiguration(ctx context.Context, cfg *BGPConfiguration) (*BGPConfiguration, error) {
	return typed[*BGPConfiguration](c.ApplyResource(ctx, cfg))
}

// DeleteBGPConfiguration deletes a BGP configuration, conditional on resourceVersion unless it is "".
func (c *Client) DeleteBGPConfiguration(ctx context.Context, name, resourceVersion string) (*BGPConfiguration, error) {
	return typed[*BGPConfiguration](c.DeleteResource(ctx, KindBGPConfiguration, name, resourceVersion))
}

// GetBGPPeer reads one BGP peer; a missing one wraps ErrNotFound.
func (c *Client) GetBGPPeer(ctx context.Context, name string) (*BGPPeer, error) {
	return typed[*BGPPeer](c.GetResource(ctx, KindBGPPeer, name))
}

// ListBGPPeers reads every BGP peer (documents that do not decode are left out).
func (c *Client) ListBGPPeers(ctx context.Context) ([]*BGPPeer, error) {
	return typedList[*BGPPeer](c.ListResources(ctx, KindBGPPeer))
}

// CreateBGPPeer stores a new BGP peer; an existing one wraps ErrAlreadyExists.
func (c *Client) CreateBGPPeer(ctx context.Context, p *BGPPeer) (*BGPPeer, error) {
	return typed[*BGPPeer](c.CreateResource(ctx, p))
}

// UpdateBGPPeer replaces a stored BGP peer, conditional on its resourceVersion when set.
func (c *Client) UpdateBGPPeer(ctx context.Context, p *BGPPeer) (*BGPPeer, error) {
	return typed[*BGPPeer](c.UpdateResource(ctx, p))
}

// ApplyBGPPeer creates or updates a BGP peer.
func (c *Client) ApplyBGPPeer(ctx context.Context, p *BGPPeer) (*BGPPeer, error) {
	return typed[*BGPPeer](c.ApplyResource(ctx, p))
}

// DeleteBGPPeer deletes a BGP peer, conditional on resourceVersion unless it is "".
func (c *Client) DeleteBGPPeer(ctx context.Context, name, resourceVersion string) (*BGPPeer, error) {
	return typed[*BGPPeer](c.DeleteResource(ctx, KindBGPPeer, name, resourceVersion))
}

// GetNode reads one node; a missing one wraps ErrNotFound.
func (c *Client) GetNode(ctx context.Context, name string) (*Node, error) {
	return typed[*Node](c.GetResource(ctx, KindNode, name))
}

// ListNodes reads every node (documents that do not decode are left out).
func (c *Client) ListNodes(ctx context.Context) ([]*Node, error) {
	return typedList[*Node](c.ListResources(ctx, KindNode))
}

// CreateNode stores a new node; an existing one wraps ErrAlreadyExists.
func (c *Client) CreateNode(ctx context.Context, n *Node) (*Node, error) {
	return typed[*Node](c.CreateResource(ctx, n))
}

// UpdateNode replaces a stored node, conditional on its resourceVersion when set.
func (c *Client) UpdateNode(ctx context.Context, n *Node) (*Node, error) {
	return typed[*Node](c.UpdateResource(ctx, n))
}

// ApplyNode creates or updates a node.
func (c *Client) ApplyNode(ctx context.Context, n *Node) (*Node, error) {
	return typed[*Node](c.ApplyResource(ctx, n))
}

// DeleteNode deletes a node, conditional on resourceVersion unless it is "".
func (c *Client) DeleteNode(ctx context.Context, name, resourceVersion string) (*Node, error) {
	return typed[*Node](c.DeleteResource(ctx, KindNode, name, resourceVersion))
}
