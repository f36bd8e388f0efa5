// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

interface ICohortStudyWithdraw {
    function withdraw() external returns (uint256);
}

/// @title ReentrantOwner: test-only data owner whose receive() re-enters withdraw()
/// @dev Compiled by tests/bounties/test_bounties_contract.py at test time; never deployed
/// outside tests. The nested call's revert data is kept so the test can name the guard
/// that stopped it.
contract ReentrantOwner {
    ICohortStudyWithdraw public study;
    bool public reentered;
    bool public reentrySucceeded;
    bytes public reentryError;

    function attack(address target) external {
        study = ICohortStudyWithdraw(target);
        study.withdraw();
    }

    receive() external payable {
        if (reentered) return;
        reentered = true;
        try study.withdraw() {
            reentrySucceeded = true;
        } catch (bytes memory reason) {
            reentryError = reason;
        }
    }
}
