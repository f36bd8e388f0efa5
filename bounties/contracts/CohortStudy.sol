// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title CohortStudy: escrow and quorum attestation for one Cohort federated study
/// @notice The sponsor deploys one contract per study and funds its bounty. The contract
/// stores the hash of the signed study manifest every party approved, and is bounded by it:
/// rounds 1..`rounds` only, settlement only once the final round is finalized or the
/// `deadline` has passed. After each training round the aggregator committee attests the
/// hash of the aggregate and the canonical list of contributing data owners; once `quorum`
/// distinct members agree on the same (round, aggregateHash, contributors) the round is final
/// and every contributor earns one accepted contribution. When the study ends the sponsor
/// settles: each data owner is credited `bounty * contributions / totalContributions` and
/// withdraws it (pull payments).
/// @dev No transaction loops over the whole data-owner roster, so a study of thousands of
/// hospitals fits real block gas limits: the roster is registered in ascending batches (the
/// first in the constructor) up to the `dataOwnerCount` fixed at deployment, and settlement
/// credits the contributors in ascending batches. One storage slot per data owner holds its
/// roster flag and contribution count.
/// @dev Committee members sign off-chain (EIP-191 personal-sign over `attestationDigest`), so
/// they need no funds: anyone, usually the coordinator, relays the signature and pays gas.
/// The digest binds the chain id, this contract's address and the study id, so a signature
/// can never be replayed on another chain, another study or another round.
contract CohortStudy {
    // ------------------------------------------------------------------ constants

    /// @notice Domain-separation tag of an attestation, the first word of the signed struct.
    bytes32 public constant ATTESTATION_TYPEHASH = keccak256(
        "cohort/v1/attestation(uint256 chainId,address study,bytes32 studyId,uint256 round,"
        "bytes32 aggregateHash,bytes32 contributorsHash,bytes32 ledgerHash)"
    );

    /// @notice Largest committee the contract accepts (bounds per-attestation work).
    uint256 public constant MAX_COMMITTEE = 64;

    /// @notice Largest data-owner roster the contract accepts: a finalizing attestation
    /// touches every contributor (about 10,500 gas each; 10.9M for 1,024) and must stay under
    /// EIP-7825's per-transaction cap of 2^24 (16.7M) gas.
    uint256 public constant MAX_DATA_OWNERS = 1024;

    /// @dev secp256k1n / 2: signatures with a larger `s` are malleable twins and rejected.
    uint256 private constant HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    // ------------------------------------------------------------------ errors

    /// @notice The committee roster is empty or longer than MAX_COMMITTEE.
    error InvalidCommitteeSize(uint256 size);
    /// @notice The data-owner roster is empty or longer than MAX_DATA_OWNERS.
    error InvalidDataOwnerCount(uint256 count);
    /// @notice The roster already holds `dataOwnerCount` owners; `extra` more were sent.
    error RosterFull(uint256 count, uint256 extra);
    /// @notice Only `registered` of the `count` data owners are registered yet.
    error RosterIncomplete(uint256 registered, uint256 count);
    /// @notice Data owners are registered in strictly increasing address order, across
    /// batches; the owner at `index` of this batch breaks it (so no owner is listed twice).
    error DataOwnersNotAscending(uint256 index);
    /// @notice A registration or settlement batch is empty.
    error EmptyBatch();
    /// @notice Settlement credits contributors in strictly increasing address order, each
    /// once; the entry at `index` of this batch breaks the order or has no contribution.
    error SettlementOrder(uint256 index);
    /// @notice Quorum must satisfy committeeSize / 2 < quorum <= committeeSize.
    error InvalidQuorum(uint256 quorum, uint256 committeeSize);
    /// @notice The study id must not be zero.
    error ZeroStudyId();
    /// @notice The manifest hash must not be zero.
    error ZeroManifestHash();
    /// @notice A study runs at least one round.
    error InvalidRounds(uint256 rounds);
    /// @notice The deadline (unix seconds) must lie after the deployment block's timestamp.
    error InvalidDeadline(uint256 deadline, uint256 timestamp);
    /// @notice A roster lists the zero address.
    error ZeroAddress();
    /// @notice An address appears twice in the committee roster.
    error DuplicateCommitteeMember(address member);
    /// @notice A call that must carry ether carried none.
    error ZeroValue();
    /// @notice The caller is not the sponsor.
    error NotSponsor(address caller);
    /// @notice Settlement has begun (or completed): no more funding or attestations.
    error StudyAlreadySettled();
    /// @notice The signature is not 65 bytes long.
    error InvalidSignatureLength(uint256 length);
    /// @notice The signature has a bad `v`, a malleable (high) `s`, or recovers no signer.
    error InvalidSignature();
    /// @notice The recovered signer is not on the committee.
    error NotCommitteeMember(address signer);
    /// @notice This committee member already attested this round.
    error AlreadyAttested(uint256 round, address member);
    /// @notice Rounds are numbered 1..rounds; `round` is outside that range.
    error RoundOutOfRange(uint256 round, uint256 rounds);
    /// @notice The aggregate hash must not be zero (zero marks an unfinalized round).
    error ZeroAggregateHash();
    /// @notice An attestation must name at least one contributor.
    error EmptyContributors();
    /// @notice Contributors must be strictly increasing addresses; `index` breaks the order.
    error ContributorsNotCanonical(uint256 index);
    /// @notice A contributor is not a registered data owner.
    error NotDataOwner(address account);
    /// @notice One ledger head and one epsilon are needed per contributor, in its order.
    error LedgerLengthMismatch(uint256 contributors, uint256 heads, uint256 epsilons);
    /// @notice The caller has no credit to withdraw.
    error NothingToWithdraw(address account);
    /// @notice The ether transfer to `account` failed.
    error TransferFailed(address account, uint256 amount);
    /// @notice A guarded function was re-entered.
    error Reentrancy();
    /// @notice settle() needs the final round finalized or the deadline reached.
    error StudyNotFinished(uint256 finalRound, uint256 deadline, uint256 timestamp);

    // ------------------------------------------------------------------ events

    /// @notice The study was created for `manifestHash` with its rosters, bounds and bounty.
    event StudyCreated(
        bytes32 indexed studyId,
        bytes32 indexed manifestHash,
        address indexed sponsor,
        address[] committee,
        uint256 quorum,
        uint256 dataOwnerCount,
        uint256 rounds,
        uint256 deadline,
        uint256 bounty
    );
    /// @notice These data owners joined the roster (ascending); `registered` are listed now,
    /// and `rosterHash` is the running roster hash after them (see dataOwnersHash()).
    event DataOwnersRegistered(address[] dataOwners, uint256 registered, bytes32 rosterHash);
    /// @notice The sponsor added `amount` wei; `bounty` is the new total.
    event Funded(address indexed sponsor, uint256 amount, uint256 bounty);
    /// @notice `member` attested `aggregateHash` for `round`; `votes` members now agree on it.
    event Attested(
        uint256 indexed round,
        address indexed member,
        bytes32 indexed aggregateHash,
        bytes32 contributorsHash,
        uint256 votes,
        address relayer
    );
    /// @notice `round` reached quorum on `aggregateHash` with these contributors.
    event RoundFinalized(
        uint256 indexed round,
        bytes32 indexed aggregateHash,
        bytes32 contributorsHash,
        address[] contributors
    );
    /// @notice On finalization of `round`: `contributor`'s privacy-ledger head after that
    /// round and its cumulative epsilon in micro-epsilon (floor(epsilon * 1e6)), as the
    /// contributor signed them to the committee and the quorum attested them.
    event LedgerHead(
        uint256 indexed round,
        address indexed contributor,
        bytes32 head,
        uint256 epsilonMicro
    );
    /// @notice `account` was credited `amount` wei at settlement.
    event Credited(address indexed account, uint256 amount);
    /// @notice The study was settled: `sponsorCredit` is the refund plus rounding dust.
    event Settled(uint256 bounty, uint256 totalContributions, uint256 sponsorCredit);
    /// @notice `account` withdrew `amount` wei.
    event Withdrawn(address indexed account, uint256 amount);

    // ------------------------------------------------------------------ state

    /// @notice Study id (32 bytes) that every attestation signs.
    bytes32 public immutable studyId;
    /// @notice Deployer: funds the bounty, settles, and receives refunds and dust.
    address public immutable sponsor;
    /// @notice Distinct committee members needed to finalize a round.
    uint256 public immutable quorum;
    /// @notice Hash of the signed study manifest every party approved (never zero).
    bytes32 public immutable manifestHash;
    /// @notice Size of the data-owner roster, fixed at deployment.
    uint256 public immutable dataOwnerCount;
    /// @notice Number of rounds in the manifest; rounds are numbered 1..rounds.
    uint256 public immutable rounds;
    /// @notice Unix time (seconds) from which settle() no longer waits for the final round.
    uint256 public immutable deadline;

    /// @notice Total wei escrowed for the study (constructor value plus every fund()).
    uint256 public bounty;
    // Settlement progress shares one slot: the last contributor credited (each batch
    // continues strictly above it), how many are credited, and the two flags.
    /// @notice Whether settlement has completed (every contributor credited).
    bool public settled;
    /// @notice Whether settlement has begun: no more funding or attestations from then on.
    bool public settling;
    /// @notice Contributors credited so far by settle() batches.
    uint64 public settledContributors;
    address private _lastSettled;
    /// @notice Number of rounds finalized so far.
    uint256 public finalizedRounds;
    /// @notice Sum of every data owner's accepted contributions.
    uint256 public totalContributions;
    /// @notice Data owners with at least one accepted contribution.
    uint256 public contributorCount;
    /// @notice Data owners registered so far (dataOwnerCount once the roster is complete).
    uint64 public registeredDataOwners;
    /// @dev The last registered owner (one slot with the count): each registration batch
    /// continues strictly above it.
    address private _lastRegistered;
    /// @notice keccak256 chain over the registered owners in ascending order:
    /// h_0 = 0, h_i = keccak256(abi.encode(h_{i-1}, owner_i)). Anyone holding the manifest's
    /// roster recomputes it to check the registered roster without reading it back.
    bytes32 public dataOwnersHash;
    /// @dev Wei credited to contributors so far; the rest of the bounty is the sponsor's.
    uint256 private _paid;
    /// @notice Wei an account may withdraw (set by settle(), cleared by withdraw()).
    mapping(address account => uint256 amount) public credit;
    /// @notice Whether an address is on the committee.
    mapping(address account => bool member) public isCommitteeMember;

    /// @dev One slot per data owner: listed flag and accepted contributions.
    struct Owner {
        bool listed;
        uint64 contributions;
    }

    mapping(address account => Owner state) private _owners;
    address[] private _committee;

    /// @dev A round is finalized exactly when its aggregateHash is non-zero (attest() refuses
    /// a zero hash), which saves a storage slot per round.
    struct RoundState {
        bytes32 aggregateHash;
        bytes32 contributorsHash;
    }

    mapping(uint256 round => RoundState state) private _rounds;
    mapping(uint256 round => mapping(address member => bool done)) private _attested;
    mapping(bytes32 voteKey => uint256 count) private _votes;

    bool private transient _locked;

    // ------------------------------------------------------------------ modifiers

    modifier onlySponsor() {
        if (msg.sender != sponsor) revert NotSponsor(msg.sender);
        _;
    }

    modifier notSettled() {
        if (settling) revert StudyAlreadySettled();
        _;
    }

    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    // ------------------------------------------------------------------ construction

    /// @notice Create a study; the deployer becomes the sponsor and msg.value the bounty.
    /// @param studyId_ Non-zero 32-byte study id.
    /// @param manifestHash_ Non-zero hash of the approved study manifest.
    /// @param committee_ Distinct, non-zero committee member addresses (1..MAX_COMMITTEE).
    /// @param quorum_ Members needed to finalize: more than half the committee, at most all.
    /// @param dataOwners_ The first data owners, strictly increasing non-zero addresses (may
    /// be all of them; the rest follow through registerDataOwners).
    /// @param dataOwnerCount_ Size of the whole roster, 1..MAX_DATA_OWNERS.
    /// @param rounds_ The manifest's number of rounds, at least 1.
    /// @param deadline_ Unix seconds, after this block's timestamp: settle() stops waiting.
    constructor(
        bytes32 studyId_,
        bytes32 manifestHash_,
        address[] memory committee_,
        uint256 quorum_,
        address[] memory dataOwners_,
        uint256 dataOwnerCount_,
        uint256 rounds_,
        uint256 deadline_
    ) payable {
        if (studyId_ == bytes32(0)) revert ZeroStudyId();
        if (manifestHash_ == bytes32(0)) revert ZeroManifestHash();
        if (rounds_ == 0) revert InvalidRounds(rounds_);
        if (deadline_ <= block.timestamp) revert InvalidDeadline(deadline_, block.timestamp);
        uint256 size = committee_.length;
        if (size == 0 || size > MAX_COMMITTEE) revert InvalidCommitteeSize(size);
        if (quorum_ == 0 || quorum_ > size || 2 * quorum_ <= size) {
            revert InvalidQuorum(quorum_, size);
        }
        if (dataOwnerCount_ == 0 || dataOwnerCount_ > MAX_DATA_OWNERS) {
            revert InvalidDataOwnerCount(dataOwnerCount_);
        }

        for (uint256 i = 0; i < size; ++i) {
            address member = committee_[i];
            if (member == address(0)) revert ZeroAddress();
            if (isCommitteeMember[member]) revert DuplicateCommitteeMember(member);
            isCommitteeMember[member] = true;
        }
        studyId = studyId_;
        sponsor = msg.sender;
        quorum = quorum_;
        manifestHash = manifestHash_;
        rounds = rounds_;
        deadline = deadline_;
        dataOwnerCount = dataOwnerCount_;
        bounty = msg.value;
        _committee = committee_;
        emit StudyCreated(
            studyId_,
            manifestHash_,
            msg.sender,
            committee_,
            quorum_,
            dataOwnerCount_,
            rounds_,
            deadline_,
            msg.value
        );
        if (dataOwners_.length > 0) _register(dataOwners_, dataOwnerCount_);
    }

    // ------------------------------------------------------------------ sponsor

    /// @notice Add msg.value to the bounty. Sponsor only, before settlement.
    function fund() external payable onlySponsor notSettled {
        if (msg.value == 0) revert ZeroValue();
        uint256 total = bounty + msg.value;
        bounty = total;
        emit Funded(msg.sender, msg.value, total);
    }

    /// @notice Add the next data owners to the roster. Sponsor only, before settlement,
    /// until `dataOwnerCount` are listed. Each batch continues the strictly increasing
    /// address order, so the roster is canonical and no owner can be listed twice.
    function registerDataOwners(address[] calldata owners) external onlySponsor notSettled {
        _register(owners, dataOwnerCount);
    }

    /// @notice Settle the study: credit the next `contributors` and, once every contributor
    /// is credited, the rest of the bounty to the sponsor. Sponsor only; the first call needs
    /// the final round (`rounds`) finalized or `deadline` reached, and stops funding and
    /// attestation. Calls continue the strictly increasing address order over the data
    /// owners with contributions (contributorCount in all); a study with none settles with
    /// an empty list.
    /// @dev Data owner i gets bounty * contributions[i] / totalContributions (rounded down);
    /// the sponsor gets the rounding dust, or the whole bounty if no round was finalized.
    function settle(address[] calldata contributors) external onlySponsor {
        if (settled) revert StudyAlreadySettled();
        if (!settling) {
            if (_rounds[rounds].aggregateHash == bytes32(0) && block.timestamp < deadline) {
                revert StudyNotFinished(rounds, deadline, block.timestamp);
            }
            settling = true;
        }
        uint256 n = contributors.length;
        uint256 done = settledContributors;
        if (n == 0 && done < contributorCount) revert EmptyBatch();
        uint256 total = totalContributions;
        uint256 pool = bounty;
        uint256 paid = _paid;
        address previous = _lastSettled;
        for (uint256 i = 0; i < n; ++i) {
            address owner = contributors[i];
            uint256 count = _owners[owner].contributions;
            if (owner <= previous || count == 0) revert SettlementOrder(i);
            previous = owner;
            uint256 share = (pool * count) / total;
            if (share > 0) {
                credit[owner] += share;
                paid += share;
                emit Credited(owner, share);
            }
        }
        done += n;
        _lastSettled = previous;
        settledContributors = uint64(done);
        _paid = paid;
        if (done < contributorCount) return;
        settled = true;
        uint256 rest = pool - paid;
        if (rest > 0) {
            credit[sponsor] += rest;
            emit Credited(sponsor, rest);
        }
        emit Settled(pool, total, rest);
    }

    // ------------------------------------------------------------------ committee

    /// @notice Relay a committee member's signed attestation for `round`.
    /// @dev Anyone may call; the signer is recovered from `signature` over
    /// attestationDigest(round, aggregateHash, contributors).
    /// @param round Training round number, 1..rounds.
    /// @param aggregateHash 32-byte hash of the round's aggregate, never zero.
    /// @param contributors Data owners whose updates are in the aggregate, strictly increasing.
    /// @param heads Each contributor's ledger head after `round`, in `contributors` order.
    /// @param epsilonsMicro Each contributor's cumulative epsilon * 1e6, in the same order.
    /// @param signature 65 bytes r || s || v with v in {27, 28} and low s.
    /// @return finalizedNow True if this attestation brought the round to quorum.
    function attest(
        uint256 round,
        bytes32 aggregateHash,
        address[] calldata contributors,
        bytes32[] calldata heads,
        uint256[] calldata epsilonsMicro,
        bytes calldata signature
    ) external notSettled returns (bool finalizedNow) {
        if (round == 0 || round > rounds) revert RoundOutOfRange(round, rounds);
        if (aggregateHash == bytes32(0)) revert ZeroAggregateHash();
        if (registeredDataOwners < dataOwnerCount) {
            revert RosterIncomplete(registeredDataOwners, dataOwnerCount);
        }
        bytes32 contributorsHash = _checkContributors(contributors);
        uint256 count = _vote(
            round,
            aggregateHash,
            contributorsHash,
            _ledgerHash(contributors.length, heads, epsilonsMicro),
            signature
        );

        RoundState storage state = _rounds[round];
        if (count >= quorum && state.aggregateHash == bytes32(0)) {
            state.aggregateHash = aggregateHash;
            state.contributorsHash = contributorsHash;
            finalizedRounds += 1;
            _credit(round, contributors, heads, epsilonsMicro);
            emit RoundFinalized(round, aggregateHash, contributorsHash, contributors);
            return true;
        }
        return false;
    }

    /// @dev Count one contribution per contributor of the finalized `round` and publish the
    /// ledger heads and epsilons the quorum attested.
    function _credit(
        uint256 round,
        address[] calldata contributors,
        bytes32[] calldata heads,
        uint256[] calldata epsilonsMicro
    ) private {
        uint256 n = contributors.length;
        uint256 first = 0;
        for (uint256 i = 0; i < n; ++i) {
            Owner storage owner = _owners[contributors[i]];
            uint64 count = owner.contributions;
            if (count == 0) ++first;
            owner.contributions = count + 1;
            emit LedgerHead(round, contributors[i], heads[i], epsilonsMicro[i]);
        }
        totalContributions += n;
        contributorCount += first;
    }

    /// @dev Recover the signer, check it may vote on `round`, count its vote; returns how
    /// many members now agree on exactly this result.
    function _vote(
        uint256 round,
        bytes32 aggregateHash,
        bytes32 contributorsHash,
        bytes32 ledgerHash,
        bytes calldata signature
    ) private returns (uint256 count) {
        bytes32 digest = _digest(round, aggregateHash, contributorsHash, ledgerHash);
        address member = _recover(digest, signature);
        if (!isCommitteeMember[member]) revert NotCommitteeMember(member);
        if (_attested[round][member]) revert AlreadyAttested(round, member);
        _attested[round][member] = true;

        bytes32 key = keccak256(abi.encode(round, aggregateHash, contributorsHash, ledgerHash));
        count = _votes[key] + 1;
        _votes[key] = count;
        emit Attested(round, member, aggregateHash, contributorsHash, count, msg.sender);
    }

    // ------------------------------------------------------------------ data owners

    /// @notice Pay msg.sender its whole credit.
    /// @return amount Wei sent.
    function withdraw() external nonReentrant returns (uint256 amount) {
        return _payOut(msg.sender);
    }

    /// @notice Pay `account` its whole credit; anyone may call (and pay the gas).
    /// @dev The funds can only ever go to `account` itself, so relaying is harmless: it lets
    ///      the sponsor push payouts to data owners whose payout accounts hold no gas.
    /// @return amount Wei sent.
    function release(address account) external nonReentrant returns (uint256 amount) {
        return _payOut(account);
    }

    function _payOut(address account) private returns (uint256 amount) {
        amount = credit[account];
        if (amount == 0) revert NothingToWithdraw(account);
        credit[account] = 0;
        emit Withdrawn(account, amount);
        (bool ok, ) = payable(account).call{value: amount}("");
        if (!ok) revert TransferFailed(account, amount);
    }

    // ------------------------------------------------------------------ views

    /// @notice The EIP-191-prefixed digest a committee member signs for this attestation.
    /// @dev Reverts like attest() if `contributors` is not canonical.
    function attestationDigest(
        uint256 round,
        bytes32 aggregateHash,
        address[] calldata contributors,
        bytes32[] calldata heads,
        uint256[] calldata epsilonsMicro
    ) external view returns (bytes32) {
        bytes32 contributorsHash = _checkContributors(contributors);
        bytes32 ledgerHash = _ledgerHash(contributors.length, heads, epsilonsMicro);
        return _digest(round, aggregateHash, contributorsHash, ledgerHash);
    }

    /// @notice The finalized aggregate hash of `round`, or zero if it is not finalized.
    function finalizedHash(uint256 round) external view returns (bytes32) {
        return _rounds[round].aggregateHash;
    }

    /// @notice keccak256(abi.encodePacked(contributors)) of the finalized result of `round`.
    function finalizedContributorsHash(uint256 round) external view returns (bytes32) {
        return _rounds[round].contributorsHash;
    }

    /// @notice Whether `round` reached quorum.
    function isFinalized(uint256 round) external view returns (bool) {
        return _rounds[round].aggregateHash != bytes32(0);
    }

    /// @notice Whether `member` has attested `round`.
    function hasAttested(uint256 round, address member) external view returns (bool) {
        return _attested[round][member];
    }

    /// @notice Members that attested exactly this
    /// (round, aggregateHash, contributorsHash, ledgerHash).
    function votes(
        uint256 round,
        bytes32 aggregateHash,
        bytes32 contributorsHash,
        bytes32 ledgerHash
    ) external view returns (uint256) {
        return _votes[keccak256(abi.encode(round, aggregateHash, contributorsHash, ledgerHash))];
    }

    /// @notice The committee roster in deployment order.
    function committee() external view returns (address[] memory) {
        return _committee;
    }

    /// @notice Whether an address is a registered data owner.
    function isDataOwner(address account) external view returns (bool) {
        return _owners[account].listed;
    }

    /// @notice Accepted contributions (finalized rounds it contributed to) of `owner`.
    function contributions(address owner) external view returns (uint256) {
        return _owners[owner].contributions;
    }

    // ------------------------------------------------------------------ internals

    function _register(address[] memory owners, uint256 count) private {
        uint256 n = owners.length;
        if (n == 0) revert EmptyBatch();
        uint256 registered = registeredDataOwners;
        if (n > count - registered) revert RosterFull(count, n - (count - registered));
        address previous = _lastRegistered;
        bytes32 rosterHash = dataOwnersHash;
        for (uint256 i = 0; i < n; ++i) {
            address owner = owners[i];
            if (owner == address(0)) revert ZeroAddress();
            if (owner <= previous) revert DataOwnersNotAscending(i);
            previous = owner;
            _owners[owner].listed = true;
            rosterHash = keccak256(abi.encode(rosterHash, owner));
        }
        registered += n;
        registeredDataOwners = uint64(registered);
        _lastRegistered = previous;
        dataOwnersHash = rosterHash;
        emit DataOwnersRegistered(owners, registered, rosterHash);
    }

    function _checkContributors(address[] calldata contributors) private view returns (bytes32) {
        uint256 n = contributors.length;
        if (n == 0) revert EmptyContributors();
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            address current = contributors[i];
            if (i > 0 && current <= previous) revert ContributorsNotCanonical(i);
            if (!_owners[current].listed) revert NotDataOwner(current);
            previous = current;
        }
        return keccak256(abi.encodePacked(contributors));
    }

    function _ledgerHash(
        uint256 n,
        bytes32[] calldata heads,
        uint256[] calldata epsilonsMicro
    ) private pure returns (bytes32) {
        if (heads.length != n || epsilonsMicro.length != n) {
            revert LedgerLengthMismatch(n, heads.length, epsilonsMicro.length);
        }
        return keccak256(abi.encode(heads, epsilonsMicro));
    }

    function _digest(
        uint256 round,
        bytes32 aggregateHash,
        bytes32 contributorsHash,
        bytes32 ledgerHash
    ) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                ATTESTATION_TYPEHASH,
                block.chainid,
                address(this),
                studyId,
                round,
                aggregateHash,
                contributorsHash,
                ledgerHash
            )
        );
        return keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", structHash));
    }

    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        if (signature.length != 65) revert InvalidSignatureLength(signature.length);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v != 27 && v != 28) revert InvalidSignature();
        if (uint256(s) > HALF_CURVE_ORDER || r == bytes32(0) || s == bytes32(0)) {
            revert InvalidSignature();
        }
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature();
        return signer;
    }
}
