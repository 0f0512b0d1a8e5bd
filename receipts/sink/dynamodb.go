package sink

import (
	"context"
	"errors"
)

// errDynamoNotBuilt: the DynamoDB sink is being built (issue #17).
var errDynamoNotBuilt = errors.New("receipt sink dynamodb:// is not built yet")

func parseDynamo(url string) (string, error) { return "", errDynamoNotBuilt }

func openDynamo(ctx context.Context, url string) (Store, error) { return nil, errDynamoNotBuilt }
